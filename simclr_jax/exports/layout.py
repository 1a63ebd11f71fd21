"""PyTorch's layout of the SimCLR model, and the rules every export file obeys.

Flax keeps convolution kernels as HWIO and dense kernels as (in, out);
PyTorch (and ONNX) as OIHW and (out, in). The key names are torchvision's
ResNet names (`conv1`, `bn1`, `layer1.0.conv2`, `layer1.0.downsample.0`, ...,
`fc`), extended for what torchvision lacks: the ResNet-D deep stem
(`conv1.0..2`, `bn1.0..2`), the selective-kernel mixing layers
(`layerG.B.sk_fc1`, `sk_bn`, `sk_fc2`; the doubled 3x3 convolution is
`conv2`/`bn2`) and the projection head (`head.K.linear`, `head.K.bn`).
"""

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from simclr_jax import config as config_lib
from simclr_jax.models import resnet as resnet_lib
from simclr_jax.models import simclr as simclr_lib

# The preprocessing of every file written here (the JAX encoder takes NHWC).
LAYOUT = "NCHW"
INPUT_NOTE = ("float32 RGB in [0, 1] (no mean/std normalisation), NCHW; "
              "resize and centre-crop as 'preprocessing' says")
TORCHVISION_DEPTHS = (50, 101, 152)
TORCHVISION_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default


def architecture(model_cfg: Dict[str, Any], num_classes: int
                 ) -> Dict[str, Any]:
  """Everything a non-JAX reader needs to rebuild the model.

  Args:
    model_cfg: the export's model config.
    num_classes: classes of the supervised head (0 = none).

  Returns:
    A JSON-able dict: stage_sizes, bottleneck, width, base_widths, sk_ratio,
    sk_min_dim, stem, bn_epsilon, head_dims (widths of the projection-head
    layers, [] = none), num_classes, sup_head_from.
  """
  model = simclr_lib.build_model(model_cfg, num_classes)
  h_dim = simclr_lib.representation_dim(model_cfg)
  hidden = model.head_hidden_dim or h_dim
  head_dims = [model.proj_dim if k == model.head_layers - 1 else hidden
               for k in range(model.head_layers)]
  return {"depth": int(model_cfg["depth"]),
          "stage_sizes": list(model.stage_sizes),
          "bottleneck": bool(model.bottleneck), "width": int(model.width),
          "base_widths": list(model.base_widths),
          "sk_ratio": float(model.sk_ratio), "sk_min_dim": int(model.sk_min_dim),
          "stem": model.stem, "bn_epsilon": float(model.bn_epsilon),
          "h_dim": int(h_dim), "head_dims": head_dims,
          "num_classes": int(num_classes),
          "sup_head_from": int(model.sup_head_from)}


def torchvision_model(arch: Dict[str, Any]) -> Tuple[Optional[str], str]:
  """The torchvision constructor with the same weights, or why there is none.

  Returns:
    ('resnet50', '') or (None, reason).
  """
  depth = arch["depth"]
  if arch["sk_ratio"] > 0:
    return None, "selective kernels are not in torchvision"
  if arch["stem"] != "imagenet":
    return None, "the CIFAR stem (3x3 stride 1, no max-pool) is not torchvision's"
  if depth not in TORCHVISION_DEPTHS:
    return None, (f"ResNet-{depth} here has a projection shortcut in its "
                  "first stage (official SimCLR), torchvision's has none")
  if arch["width"] != 1:
    return None, (f"width {arch['width']} widens every layer; torchvision's "
                  f"wide_resnet{depth}_2 widens only the inner ones")
  if (arch["stage_sizes"] != list(resnet_lib.STAGE_SIZES[depth]) or
      arch["base_widths"] != list(resnet_lib.BASE_WIDTHS)):
    return None, "the stage sizes or widths are not a standard ResNet's"
  if arch["bn_epsilon"] != TORCHVISION_EPSILON:
    return None, f"BatchNorm epsilon {arch['bn_epsilon']} is not torch's 1e-5"
  return f"resnet{depth}", ""


def deep_stem(arch: Dict[str, Any]) -> bool:
  """Whether the stem is the ResNet-D one (three 3x3 convolutions)."""
  return arch["stem"] == "imagenet" and arch["sk_ratio"] > 0


# Block sub-modules whose torch names differ from the Flax ones.
_BLOCK_NAMES = {"proj_conv": "downsample.0", "proj_bn": "downsample.1",
                "sk_conv.conv": "conv2", "sk_conv.bn": "bn2",
                "sk_conv.fc1": "sk_fc1", "sk_conv.fc1_bn": "sk_bn",
                "sk_conv.fc2": "sk_fc2"}


def _module_name(path: Tuple[str, ...], deep: bool) -> str:
  """Maps a Flax module path (without the leaf) to the torch key prefix."""
  top, name = path[0], path[1]
  if top == "sup_head":
    return "fc"
  if top == "head":  # dense{k} / bn{k}
    if name.startswith("dense"):
      return f"head.{name[len('dense'):]}.linear"
    return f"head.{name[len('bn'):]}.bn"
  if name.startswith("stem_"):  # stem_conv{i} / stem_bn{i}
    kind, i = name[len("stem_"):-1], name[-1]
    return f"{kind}1.{i}" if deep else f"{kind}1"
  stage, block = name[len("stage"):].split("_block")
  inner = ".".join(path[2:])
  return f"layer{int(stage) + 1}.{block}.{_BLOCK_NAMES.get(inner, inner)}"


def torch_state_dict(variables: Dict[str, Any], arch: Dict[str, Any]
                     ) -> Dict[str, np.ndarray]:
  """The model's variables under PyTorch names and layouts.

  Args:
    variables: {'params', 'batch_stats'} of the SimCLR model (host arrays).
    arch: `architecture(...)` of the same model.

  Returns:
    An ordered {key: float32 array} (int64 `num_batches_tracked` per
    BatchNorm, as torch's state dicts hold), conv weights OIHW, linear
    weights (out, in); a BatchNorm without offset gets a zero bias.
  """
  deep = deep_stem(arch)
  out: Dict[str, np.ndarray] = {}
  stats = variables.get("batch_stats", {})

  def visit(tree, path):
    for key in tree:
      value = tree[key]
      if isinstance(value, dict) or hasattr(value, "items"):
        visit(value, path + (key,))
        continue
      prefix = _module_name(path, deep)
      x = np.asarray(value, np.float32)
      if key == "kernel":
        out[f"{prefix}.weight"] = np.ascontiguousarray(
            x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T)
      elif key == "bias":
        out[f"{prefix}.bias"] = x
      elif key == "scale":  # a BatchNorm: statistics from batch_stats
        node = stats
        for p in path:
          node = node[p]
        out[f"{prefix}.weight"] = x
        if "bias" not in tree:
          out[f"{prefix}.bias"] = np.zeros_like(x)
        out[f"{prefix}.running_mean"] = np.asarray(node["mean"], np.float32)
        out[f"{prefix}.running_var"] = np.asarray(node["var"], np.float32)
        out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
      else:
        raise ValueError(f"unknown variable {'/'.join(path + (key,))}")

  visit(variables["params"], ())
  if arch["sup_head_from"] > 0:  # not on h: not torchvision's fc
    out = {("sup_head" + k[2:] if k.startswith("fc.") else k): v
           for k, v in out.items()}
  return {k: out[k] for k in sorted(out, key=_key_order)}


def _key_order(key: str):
  """Sorts keys as torch modules are registered (stem, layers, fc, head)."""
  parts = key.split(".")
  rank = {"conv1": 0, "bn1": 1, "fc": 3, "sup_head": 3, "head": 4}.get(
      parts[0], 2)
  return (rank,) + tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


# ---------------------------------------------------------------- sources

def load_source(workdir: Optional[str], export: Optional[str], step: int = 0
                ) -> Tuple[Dict[str, Any], Dict[str, Any], int, Dict[str, Any],
                           Dict[str, Any]]:
  """Reads the model to write from a pretraining workdir or an export.

  Returns:
    (variables, model_cfg, num_classes, preprocessing, source) where
    preprocessing is the export convention (`exports.format`).
  """
  # Imported here: orbax and the loaders are needed only to read a source.
  from simclr_jax.exports import format as export_lib  # pylint: disable=g-import-not-at-top
  if bool(workdir) == bool(export):
    config_lib.fail("--export", export, "give exactly one of --workdir (a "
                    "pretraining run) and --export (an export directory)")
  if export:
    try:
      variables, meta = export_lib.load_export(export)
    except ValueError as e:
      config_lib.fail("--export", export, str(e))
    return (variables, meta["model"], int(meta["num_classes"]),
            export_lib.preprocessing(meta),
            {"export": os.path.abspath(export), **meta.get("extra", {})})
  from simclr_jax.engine import results as results_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  variables, model_cfg, num_classes, step = encoders.load_checkpoint(
      workdir, step)
  pre = results_lib.read_workdir_config(workdir)
  prep = export_lib.preprocessing_meta(pre.data.image_size,
                                     pre.aug.eval_crop_proportion)
  return (variables, dict(model_cfg), num_classes, prep,
          {"workdir": os.path.abspath(workdir), "step": int(step)})


# ----------------------------------------------------------- output files

def check_out_file(out: str, suffix: str, is_ours: Callable[[str], bool],
                   field: str = "--out") -> None:
  """Refuses an output file that is not ours to replace; call before work."""
  if not out.endswith(suffix):
    config_lib.fail(field, out, f"must end in {suffix}")
  if os.path.isdir(out):
    config_lib.fail(field, out, "is a directory; give a file name")
  if os.path.lexists(out):
    try:
      ours = not os.path.islink(out) and is_ours(out)
    except Exception:  # pylint: disable=broad-except
      ours = False
    if not ours:
      config_lib.fail(field, out, "exists and was not written by simclr_jax; "
                      "nothing was replaced. Choose another name")


def write_atomic(out: str, write: Callable[[str], None]) -> None:
  """Calls write(tmp) on a hidden file beside `out`, then renames it in."""
  directory, base = os.path.split(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{base}.{os.getpid()}.partial")
  try:
    write(tmp)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def metadata(arch: Dict[str, Any], preprocessing: Dict[str, Any],
             source: Dict[str, Any], fmt: str) -> Dict[str, str]:
  """The string metadata every exported file carries (JSON values)."""
  return {"format": fmt, "architecture": json.dumps(arch, sort_keys=True),
          "preprocessing": json.dumps(dict(preprocessing, layout=LAYOUT,
                                           input=INPUT_NOTE), sort_keys=True),
          "source": json.dumps(source, sort_keys=True, default=str)}


def describe(meta: Dict[str, str]) -> List[str]:
  """Human-readable lines of the preprocessing, as the command prints."""
  prep = json.loads(meta["preprocessing"])
  return [f"image size {prep['image_size']} px, centre crop "
          f"{prep['crop_proportion']:.3f} of the shorter side, "
          f"{prep['resize']}",
          f"input {prep['input']}"]
