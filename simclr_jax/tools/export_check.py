"""Full-size check of the ONNX and PyTorch exports against JAX (a benchmark).

  python -m simclr_jax.tools.export_check [--archs=r50_1x,r50_1x_sk1] \\
      [--batch=2] [--out_dir=/tmp/export_check]

For each architecture: random weights (kernels of unit fan-in variance,
BatchNorm statistics and affine terms random), the ONNX file and the
safetensors file written as `python -m simclr_jax.export` writes them, and
the largest relative difference max |a - b| / max |JAX| of ONNX Runtime
(CPU), the PyTorch module file and, for torchvision's architectures,
torchvision itself (as is, and with the max-pool of docs/elsewhere.md),
on the same random batch. Needs onnxruntime; torch/torchvision where
installed. The tests check the same on tiny models.
"""

import importlib
import os
import sys
import time

from absl import app
from absl import flags

import jax
import numpy as np

from simclr_jax.exports import layout
from simclr_jax.exports import onnx as onnx_export
from simclr_jax.exports import pytorch
from simclr_jax.models import build_model

# name: (depth, width, sk_ratio, stem, image side)
ARCHS = {
    "r18_1x_cifar": (18, 1, 0.0, "cifar", 32),
    "r50_1x_cifar": (50, 1, 0.0, "cifar", 32),
    "r18_1x": (18, 1, 0.0, "imagenet", 224),
    "r50_1x": (50, 1, 0.0, "imagenet", 224),
    "r50_2x": (50, 2, 0.0, "imagenet", 224),
    "r50_1x_sk1": (50, 1, 0.0625, "imagenet", 224),
    "r50_2x_sk1": (50, 2, 0.0625, "imagenet", 224),
    "r101_1x": (101, 1, 0.0, "imagenet", 224),
    "r152_1x": (152, 1, 0.0, "imagenet", 224),
}


def model_config(depth, width, sk_ratio, stem):
  return dict(depth=depth, width=width, sk_ratio=sk_ratio, stem=stem,
              bn_momentum=0.9, bn_epsilon=1e-5, head_layers=3,
              head_hidden_dim=0, proj_dim=128, sup_head_from=0,
              dtype="float32")


def random_variables(model, size, seed=0):
  """Random variables of the model's shapes (no compile): kernels of unit
  fan-in variance, BatchNorm statistics and affine terms all away from
  their initial values, variances positive. The export tests use it too."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32),
      train=False))
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = int(np.prod(s.shape[:-1]))
      return rng.normal(0, fan_in ** -0.5, s.shape).astype(np.float32)
    noise = rng.normal(0, 0.1, s.shape).astype(np.float32)
    if "var" in name:
      return np.abs(1 + noise) + 0.5
    return 1 + noise if "scale" in name else noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def rel(got, want):
  """max |got - want| / max |want|, in float64."""
  want = np.asarray(want, np.float64)
  return float(np.abs(np.asarray(got, np.float64) - want).max() /
               np.abs(want).max())


def check(name, out_dir, batch):
  """One row: sizes, export times and relative differences."""
  depth, width, sk, stem, size = ARCHS[name]
  cfg = model_config(depth, width, sk, stem)
  model = build_model(cfg, 1000)
  variables = random_variables(model, size)
  x = np.random.default_rng(1).random((batch, size, size, 3), np.float32)
  start = time.time()
  want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  want = {k: np.asarray(v) for k, v in want.items() if k != "proj"}
  jax_s = time.time() - start
  prep = {"image_size": size, "crop_proportion": 1.0, "resize": "bicubic"}
  row = {"arch": name, "px": size, "jax_s": jax_s}
  onnx_file = os.path.join(out_dir, f"{name}.onnx")
  result = onnx_export.write(onnx_file, variables, cfg, 1000, prep, {})
  row.update(onnx_mb=os.path.getsize(onnx_file) / 2**20,
             onnx_s=result["seconds"])
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
  h, z = sess.run(["h", "z"], {"images": x.transpose(0, 3, 1, 2)})
  row.update(onnx_h=rel(h, want["h"]), onnx_z=rel(z, want["z"]))
  st_dir = os.path.join(out_dir, name)
  st_file = os.path.join(st_dir, "encoder.safetensors")
  result = pytorch.write(st_file, variables, cfg, 1000, prep, {})
  row.update(torch_mb=os.path.getsize(st_file) / 2**20,
             torch_s=result["seconds"])
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return row
  sys.path.insert(0, st_dir)
  module = importlib.reload(importlib.import_module("simclr_jax_resnet"))
  sys.path.pop(0)
  net = module.load(st_file)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    out = net(xt)
  row.update(torch_h=rel(out["h"].numpy(), want["h"]),
             torch_z=rel(out["z"].numpy(), want["z"]))
  tv_name, _ = layout.torchvision_model(layout.architecture(cfg, 1000))
  if tv_name:
    import torchvision  # pylint: disable=g-import-not-at-top
    tv = getattr(torchvision.models, tv_name)().eval()
    state = module.read_safetensors(st_file)[0]
    keys = tv.load_state_dict(state, strict=False)
    assert not keys.missing_keys, keys.missing_keys
    with torch.no_grad():
      row["tv_logits_as_is"] = rel(tv(xt).numpy(), want["logits"])
      tv.fc = torch.nn.Identity()
      row["tv_h_as_is"] = rel(tv(xt).numpy(), want["h"])
      tv.maxpool = torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)),
                                       torch.nn.MaxPool2d(3, 2))
      row["tv_h_fixed"] = rel(tv(xt).numpy(), want["h"])
  return row


def main(argv):
  """Prints one line per --archs entry."""
  del argv
  fv = flags.FLAGS
  os.makedirs(fv.out_dir, exist_ok=True)
  for name in fv.archs:
    if name not in ARCHS:
      raise app.UsageError(f"--archs: {name!r} is not one of {list(ARCHS)}")
    row = check(name, fv.out_dir, fv.batch)
    print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in row.items()), flush=True)


def cli() -> None:
  """The command line (flags defined here, not at import)."""
  flags.DEFINE_list("archs", ["r18_1x_cifar", "r50_1x", "r50_2x",
                              "r50_1x_sk1"], f"of {list(ARCHS)}")
  flags.DEFINE_integer("batch", 2, "images per forward pass")
  flags.DEFINE_string("out_dir", "/tmp/simclr_jax_export_check",
                      "where the files are written")
  app.run(main)


if __name__ == "__main__":
  cli()
