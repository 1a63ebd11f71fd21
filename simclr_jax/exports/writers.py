"""One entry for every non-JAX format: read a source, write, describe.

Used by `python -m simclr_jax.export --format=onnx|torch|torchvision`.
"""

import json
import os
from typing import List, Optional

from simclr_jax import config as config_lib
from simclr_jax.exports import layout
from simclr_jax.exports import onnx as onnx_export
from simclr_jax.exports import pytorch

FORMATS = ("onnx", "torch", "torchvision")


def export_as(fmt: str, out: str, workdir: Optional[str] = None,
              export: Optional[str] = None, step: int = 0) -> List[str]:
  """Writes the model of --workdir or --export as `fmt` to `out`.

  Args:
    fmt: one of `FORMATS`.
    out: the file to write (.onnx or .safetensors).
    workdir: a pretraining workdir (its newest checkpoint, or `step`).
    export: an export directory (ours or a converted official checkpoint).
    step: checkpoint step of `workdir`; 0 = the newest.

  Returns:
    The lines the command prints: what was written and the preprocessing.

  Raises:
    ConfigError: a bad flag, a format the architecture cannot be written
      in, or an --out that is not ours to replace (nothing is written).
  """
  if fmt not in FORMATS:
    config_lib.fail("--format", fmt, f"allowed values are {FORMATS} "
                    "(or 'export' for the JAX export directory)")
  suffix = ".onnx" if fmt == "onnx" else ".safetensors"
  # The output checks run again in the writers; here they come before any
  # loading, so a bad --out costs nothing.
  if not out.endswith(suffix):
    config_lib.fail("--out", out, f"must end in {suffix} for --format={fmt}")
  if os.path.isdir(out):
    config_lib.fail("--out", out, "is a directory; give a file name")
  variables, model_cfg, num_classes, prep, source = layout.load_source(
      workdir, export, step)
  args = (out, variables, model_cfg, num_classes, prep, source)
  if fmt == "onnx":
    result = onnx_export.write(*args)
  else:
    result = pytorch.write(*args, torchvision=fmt == "torchvision")
  arch = json.loads(result["meta"]["architecture"])
  lines = [f"wrote {out} ({fmt}, {result['bytes'] / 2**20:.1f} MiB, "
           f"{result['seconds']:.1f} s): ResNet-{arch['depth']} width "
           f"{arch['width']}, {arch['stem']} stem, selective kernels "
           f"{'on' if arch['sk_ratio'] > 0 else 'off'}"]
  if fmt == "onnx":
    lines.append(f"input 'images' [batch, 3, height, width]; outputs "
                 f"{', '.join(json.loads(result['outputs']))}")
  elif result["module"]:
    lines.append(f"module file {result['module']} (torch only): "
                 "simclr_jax_resnet.load(FILE) rebuilds and loads it")
  if fmt != "onnx" and result["torchvision"]:
    lines.append(f"torchvision.models.{result['torchvision']}() loads the "
                 "encoder weights (strict=False leaves out head.*)")
  return lines + layout.describe(result["meta"])


def fail_jax_source(workdir: Optional[str], export: Optional[str]) -> None:
  """The one-line error of --format=export without a workdir, or with --export."""
  if export:
    config_lib.fail("--export", export, "is read by --format=onnx|torch|"
                    "torchvision; --format=export writes a --workdir's export")
  config_lib.fail("--workdir", workdir, "is required for --format=export")
