"""The encoder's weights for PyTorch: a safetensors file and its module file.

`--format=torch` writes FILE.safetensors (no pickle) in PyTorch's layout
under torchvision's key names (see `layout`), and `simclr_jax_resnet.py`
beside it: a self-contained module (torch only) that rebuilds the
architecture from the file's metadata and loads every weight strictly; it
computes what the JAX model computes, for every architecture.
`--format=torchvision` writes the same file only for architectures that a
torchvision constructor holds (ResNet-50/101/152, width 1, ImageNet stem, no
selective kernels): `torchvision.models.resnet50()` then loads every encoder
weight. torchvision's stem max-pool pads before and after, the official
code (TF 'SAME') only after; see docs/elsewhere.md for the difference and
its one-line fix.
"""

import json
import os
import shutil
import time
from typing import Any, Dict

import numpy as np

from simclr_jax import config as config_lib
from simclr_jax.exports import layout

FORMAT = "simclr_jax.torch/1"
MODULE_FILE = "simclr_jax_resnet.py"
MODULE_MARK = "# simclr_jax_resnet module file"
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
_ALIGN = 8


def save_safetensors(path: str, tensors: Dict[str, np.ndarray],
                     metadata: Dict[str, str]) -> None:
  """Writes the safetensors format: u64 header size, JSON header, raw data."""
  header: Dict[str, Any] = {"__metadata__": dict(metadata)}
  offset = 0
  for name, x in tensors.items():
    header[name] = {"dtype": _DTYPES[x.dtype], "shape": list(x.shape),
                    "data_offsets": [offset, offset + x.nbytes]}
    offset += x.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % _ALIGN)
  with open(path, "wb") as f:
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for x in tensors.values():
      f.write(np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<"),
                                              copy=False).tobytes())


def read_safetensors_meta(path: str) -> Dict[str, str]:
  """The string metadata of a safetensors file."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if size > 100_000_000:
      raise ValueError(f"{path} is not a safetensors file")
    return json.loads(f.read(size)).get("__metadata__", {})


def _is_ours(path: str) -> bool:
  return read_safetensors_meta(path).get("format") == FORMAT


def _module_is_ours(path: str) -> bool:
  with open(path) as f:
    return MODULE_MARK in f.read(4096)


def template_path() -> str:
  """The module file copied beside the weights."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), MODULE_FILE)


def write(out: str, variables: Dict[str, Any], model_cfg: Dict[str, Any],
          num_classes: int, preprocessing: Dict[str, Any],
          source: Dict[str, Any], torchvision: bool = False
          ) -> Dict[str, Any]:
  """Writes FILE.safetensors (and, unless `torchvision`, the module file).

  Args:
    out: the .safetensors file (replaced only if we wrote it).
    variables: {'params', 'batch_stats'} of the SimCLR model.
    model_cfg: its model config.
    num_classes: classes of its supervised head (0 = none).
    preprocessing: the export's preprocessing record.
    source: where the weights came from (recorded).
    torchvision: require an architecture that torchvision builds; the
      module file is then not written.

  Returns:
    {'meta', 'bytes', 'seconds', 'torchvision' (constructor or ''),
    'module' (path of the module file or '')}.
  """
  fmt = "torchvision" if torchvision else "torch"
  layout.check_out_file(out, ".safetensors", _is_ours)
  module = os.path.join(os.path.dirname(os.path.abspath(out)), MODULE_FILE)
  if not torchvision and os.path.lexists(module):
    layout.check_out_file(module, ".py", _module_is_ours, field="module file")
  start = time.time()
  arch = layout.architecture(model_cfg, num_classes)
  tv_name, why = layout.torchvision_model(arch)
  if torchvision and not tv_name:
    config_lib.fail("--format", fmt, f"{why}, so no torchvision model holds "
                    "these weights; use --format=torch (it writes "
                    f"{MODULE_FILE} beside the weights)")
  meta = layout.metadata(arch, preprocessing, source, FORMAT)
  meta["torchvision"] = tv_name or ""
  meta["torchvision_note"] = why or (
      "loads with strict=False; unexpected keys: head.* (the projection "
      "head); its stem max-pool pads differently, see docs/elsewhere.md")
  tensors = layout.torch_state_dict(variables, arch)
  layout.write_atomic(out, lambda tmp: save_safetensors(tmp, tensors, meta))
  if not torchvision:
    layout.write_atomic(module, lambda tmp: shutil.copyfile(template_path(),
                                                            tmp))
  return {"meta": meta, "bytes": os.path.getsize(out),
          "seconds": time.time() - start, "torchvision": tv_name or "",
          "module": "" if torchvision else module}

