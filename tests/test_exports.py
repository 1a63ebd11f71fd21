"""ONNX and PyTorch exports, verified by outputs against the JAX model.

Each architecture family (ResNet-18/50 blocks, width 1 and 2, selective
kernels on and off, CIFAR and ImageNet stems, and the tiny digits model) is
built with one or two blocks per stage and a few channels, its variables
perturbed (BatchNorm statistics included, so a dropped or transposed one
shows), and run by JAX, ONNX Runtime and PyTorch on the same random batch,
with the ImageNet stem at an image side whose stem output is even and one
where it is odd (the max-pool pads differently).
Full-size figures: `python -m simclr_jax.tools.export_check`.
"""

import importlib
import json
import os
import sys

import jax
import numpy as np
import pytest

from simclr_jax import config as config_lib
from simclr_jax.exports import layout
from simclr_jax.exports import onnx as onnx_export
from simclr_jax.exports import pytorch
from simclr_jax.exports import writers
from simclr_jax.models import build_model
from simclr_jax.tools.export_check import random_variables
from simclr_jax.tools.export_check import rel as rel_error

TOL = 1e-5
TINY = {"stage_sizes": (2, 1, 1, 1), "base_widths": (8, 16, 32, 64)}


def model_cfg(depth, width, sk_ratio, stem, **overrides):
  cfg = dict(depth=depth, width=width, sk_ratio=sk_ratio, stem=stem,
             bn_momentum=0.9, bn_epsilon=1e-5, head_layers=3,
             head_hidden_dim=0, proj_dim=16, sup_head_from=0,
             dtype="float32", sk_min_dim=4, **TINY)
  cfg.update(overrides)
  return cfg


ARCHS = {
    "r18_w1_cifar": (model_cfg(18, 1, 0.0, "cifar"), (16,)),
    "r18_w2_imagenet_sk": (model_cfg(18, 2, 0.0625, "imagenet"), (32, 34)),
    "r50_w1_imagenet": (model_cfg(50, 1, 0.0, "imagenet", head_layers=2,
                                  sup_head_from=1), (32, 34)),
    "r50_w2_imagenet_sk": (model_cfg(50, 2, 0.0625, "imagenet"), (32, 34)),
    "r50_w1_cifar_sk": (model_cfg(50, 1, 0.0625, "cifar", proj_head="none"),
                        (16,)),
}


@pytest.fixture()
def digits_export(tiny_workdir, tiny_export, tmp_path):
  """(a folder to write in, the tiny digits workdir, its export)."""
  return tmp_path, tiny_workdir[0], tiny_export[0]


@pytest.fixture(scope="module", params=list(ARCHS) + ["digits"])
def case(request):
  """(name, model_cfg, num_classes, variables, {size: (images, JAX outputs)})."""
  name = request.param
  if name == "digits":  # the tiny digits model of a real checkpoint
    export, _ = request.getfixturevalue("tiny_export")
    variables, cfg, num_classes, _, _ = layout.load_source(None, export)
    sizes = (16,)
  else:
    cfg, sizes = ARCHS[name]
    num_classes = 10
    variables = random_variables(build_model(cfg, num_classes), sizes[0])
  model = build_model(cfg, num_classes)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  refs = {}
  for i, size in enumerate(sizes):
    x = np.random.default_rng(i).random((3, size, size, 3), np.float32)
    refs[size] = (x, {k: np.asarray(v) for k, v in apply(variables, x).items()
                      if k != "proj"})
  return name, cfg, num_classes, variables, refs


PREP = {"image_size": 16, "crop_proportion": 1.0, "resize": "bicubic"}


def test_onnx_runtime_matches_jax(case, tmp_path):
  ort = pytest.importorskip("onnxruntime")
  name, cfg, num_classes, variables, refs = case
  out = str(tmp_path / "m.onnx")
  result = onnx_export.write(out, variables, cfg, num_classes, PREP,
                             {"test": name})
  sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
  names = [o.name for o in sess.get_outputs()]
  has_head = name != "r50_w1_cifar_sk"
  assert names == (["h", "z"] if has_head else ["h"])
  assert sess.get_inputs()[0].shape == ["batch", 3, "height", "width"]
  meta = sess.get_modelmeta().custom_metadata_map
  assert json.loads(meta["preprocessing"])["layout"] == "NCHW"
  assert json.loads(meta["architecture"])["stem"] == cfg["stem"]
  for size, (x, want) in refs.items():
    got = dict(zip(names, sess.run(None, {"images": x.transpose(0, 3, 1, 2)})))
    for key in names:
      err = rel_error(got[key], want[key])
      print(f"{name} {size}px onnx {key} rel {err:.1e} "
            f"{result['bytes']} bytes")
      assert err <= TOL, (name, size, key, err)


def test_torch_module_matches_jax(case, tmp_path):
  torch = pytest.importorskip("torch")
  name, cfg, num_classes, variables, refs = case
  out = str(tmp_path / "w" / "m.safetensors")
  result = pytorch.write(out, variables, cfg, num_classes, PREP, {})
  sys.path.insert(0, os.path.dirname(result["module"]))
  try:
    module = importlib.import_module("simclr_jax_resnet")
    module = importlib.reload(module)  # this test's copy
  finally:
    sys.path.pop(0)
  model = module.load(out)  # strict
  for size, (x, want) in refs.items():
    with torch.no_grad():
      got = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert set(got) == set(want) - ({"z"} if "z" not in got else set())
    for key in got:
      err = rel_error(got[key].numpy(), want[key])
      print(f"{name} {size}px torch {key} rel {err:.1e}")
      assert err <= TOL, (name, size, key, err)


@pytest.mark.quick
def test_safetensors_file_reads_with_the_safetensors_package(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  cfg, sizes = ARCHS["r18_w2_imagenet_sk"]
  model = build_model(cfg, 10)
  variables = random_variables(model, sizes[0])
  out = str(tmp_path / "m.safetensors")
  pytorch.write(out, variables, cfg, 10, PREP, {})
  got = st.load_file(out)
  want = layout.torch_state_dict(variables, layout.architecture(cfg, 10))
  assert set(got) == set(want)
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  w = want["layer1.0.conv1.weight"]
  kernel = variables["params"]["encoder"]["stage0_block0"]["conv1"]["kernel"]
  np.testing.assert_array_equal(w, np.transpose(kernel, (3, 2, 0, 1)))


def _torchvision(name="torchvision"):
  """Imports torchvision (or a submodule), or skips the test.

  torchvision's import pulls in triton, whose native library crashes the
  process when TensorFlow's is already loaded (tensorflow-cpu 2.21, triton
  3.8); these CPU tests need no triton, so it is hidden from them.
  """
  pytest.importorskip("torch")
  if "tensorflow" in sys.modules and "triton" not in sys.modules:
    sys.modules["triton"] = None  # import triton -> ImportError
  return pytest.importorskip(name)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_keys_load_every_encoder_weight(depth):
  torchvision = _torchvision()
  import torch  # pylint: disable=g-import-not-at-top
  cfg = model_cfg(depth, 1, 0.0, "imagenet", stage_sizes=None,
                  base_widths=None, sk_min_dim=None, proj_dim=128)
  model = build_model(cfg, 1000)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32),
      train=False))
  variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
  arch = layout.architecture(cfg, 1000)
  state = {k: torch.from_numpy(v) for k, v in
           layout.torch_state_dict(variables, arch).items()}
  result = getattr(torchvision.models, f"resnet{depth}")().load_state_dict(
      state, strict=False)
  assert result.missing_keys == []
  tv_name, why = layout.torchvision_model(arch)
  extra = [k for k in result.unexpected_keys if not k.startswith("head.")]
  if depth >= 50:
    assert tv_name == f"resnet{depth}" and extra == []
  else:  # the first stage's projection shortcut of the official ResNet
    assert tv_name is None and "first stage" in why
    assert extra and all(k.startswith("layer1.0.downsample.") for k in extra)


def test_torchvision_model_differs_only_by_its_stem_max_pool():
  """torchvision pads its max-pool by 1 on both sides, TF 'SAME' after only.

  With the blocks of ResNet-50 (one per stage), torchvision's own model
  matches where the stem output is odd and differs where it is even (224
  px included); its max-pool replaced as docs/elsewhere.md says, it matches.
  """
  resnet = _torchvision("torchvision.models.resnet")
  import torch  # pylint: disable=g-import-not-at-top
  cfg = model_cfg(50, 1, 0.0, "imagenet", stage_sizes=(1, 1, 1, 1),
                  base_widths=None)
  model = build_model(cfg, 10)
  variables = random_variables(model, 32)
  arch = layout.architecture(cfg, 10)
  state = {k: torch.from_numpy(v) for k, v in
           layout.torch_state_dict(variables, arch).items()}
  tv = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1], num_classes=10).eval()
  tv.load_state_dict(state, strict=False)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
  errors = {}
  for size in (32, 34):
    x = np.random.default_rng(size).random((2, size, size, 3), np.float32)
    want = apply(variables, x)
    tv.maxpool = torch.nn.MaxPool2d(3, 2, 1)  # torchvision's own
    with torch.no_grad():
      as_is = tv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
      tv.maxpool = torch.nn.Sequential(torch.nn.ZeroPad2d((0, 1, 0, 1)),
                                       torch.nn.MaxPool2d(3, 2))
      fixed = tv(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    errors[size] = (rel_error(as_is, want), rel_error(fixed, want))
  print("torchvision rel error (as is, max-pool replaced):", errors)
  assert errors[32][0] > 1e-2 and errors[32][1] <= TOL
  assert errors[34][0] <= TOL


# ------------------------------------------------- the command's file rules

def test_export_as_writes_replaces_its_own_and_refuses_others(digits_export):
  root, workdir, export = digits_export
  onnx_out = str(root / "m.onnx")
  lines = writers.export_as("onnx", onnx_out, export=export)
  assert "image size 16 px" in "\n".join(lines)
  assert "outputs h, z" in "\n".join(lines)
  writers.export_as("onnx", onnx_out, workdir=workdir)  # ours: replaced
  assert onnx_export.read_meta(onnx_out)["format"] == onnx_export.FORMAT
  foreign = root / "foreign.onnx"
  foreign.write_text("not ours")
  with pytest.raises(config_lib.ConfigError, match="not written by simclr"):
    writers.export_as("onnx", str(foreign), export=export)
  assert foreign.read_text() == "not ours"
  (root / "t").mkdir()
  user_module = root / "t" / pytorch.MODULE_FILE
  user_module.write_text("# someone's own file\n")
  with pytest.raises(config_lib.ConfigError, match="module file"):
    writers.export_as("torch", str(root / "t" / "w.safetensors"),
                      export=export)
  assert not (root / "t" / "w.safetensors").exists()
  assert user_module.read_text() == "# someone's own file\n"
  assert sorted(os.listdir(root / "t")) == [pytorch.MODULE_FILE]
  with pytest.raises(config_lib.ConfigError, match="must end in .safetensors"):
    writers.export_as("torch", str(root / "w.pt"), export=export)
  with pytest.raises(config_lib.ConfigError, match="exactly one"):
    writers.export_as("onnx", onnx_out, workdir=workdir, export=export)


def test_torchvision_format_refuses_other_architectures_in_one_line(
    digits_export):
  root, _, export = digits_export
  with pytest.raises(config_lib.ConfigError) as e:
    writers.export_as("torchvision", str(root / "tv.safetensors"),
                      export=export)
  message = str(e.value)
  assert "\n" not in message and "use --format=torch" in message
  assert "CIFAR stem" in message
  assert not (root / "tv.safetensors").exists()


# ------------------------------------------------------ embeddings as CSV

def _image_folder(root, labelled):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(int(labelled))
  for i in range(6):
    sub = ("cats", "dogs")[i % 2] if labelled else ""
    os.makedirs(os.path.join(root, sub), exist_ok=True)
    h, w = rng.integers(14, 40, 2)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(
        os.path.join(root, sub, f"img {i}.png"))
  return root


@pytest.mark.parametrize("labelled", [True, False],
                         ids=["class_folders", "flat"])
def test_embed_csv_holds_the_npz_rows_exactly(digits_export, tmp_path,
                                              labelled):
  import csv  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import embed  # pylint: disable=g-import-not-at-top
  _, _, export = digits_export
  images = _image_folder(str(tmp_path / "images"), labelled)
  npz, out = str(tmp_path / "e.npz"), str(tmp_path / "e.csv")
  embed.embed_folder(export, images, npz, batch_size=4, progress=False)
  embed.embed_folder(export, images, out, batch_size=4, progress=False)
  with np.load(npz) as f:
    want, paths = f["embeddings"], list(f["paths"])
  with open(out, newline="") as f:
    rows = list(csv.reader(f))
  dim = want.shape[1]
  assert rows[0] == (["filename"] + [f"embedding_{i}" for i in range(dim)] +
                     (["label"] if labelled else []))
  assert [r[0] for r in rows[1:]] == paths
  got = np.array([r[1:dim + 1] for r in rows[1:]], np.float32)
  np.testing.assert_array_equal(got, want)  # float32 round-trips exactly
  if labelled:
    assert [r[-1] for r in rows[1:]] == [p.split("/")[0] for p in paths]
  embed.embed_folder(export, images, out, batch_size=4, progress=False)
  foreign = tmp_path / "mine.csv"
  foreign.write_text("a,b\n1,2\n")
  with pytest.raises(config_lib.ConfigError, match="not an embeddings CSV"):
    embed.embed_folder(export, images, str(foreign), progress=False)
  assert foreign.read_text() == "a,b\n1,2\n"


# ----------------------------------------- docs/elsewhere.md, run as written

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "docs", "elsewhere.md")


def _blocks(lang):
  text = open(DOCS).read()
  parts = text.split(f"```{lang}\n")[1:]
  return [p.split("```")[0] for p in parts]


def test_docs_commands_and_snippets_run(digits_export, tmp_path,
                                        monkeypatch):
  """Runs the page's commands (in-process) and then its Python snippets."""
  pytest.importorskip("onnxruntime")
  pytest.importorskip("safetensors")
  _torchvision()
  import shlex  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from simclr_jax.exports import format as export_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import embed  # pylint: disable=g-import-not-at-top
  _, _, digits = digits_export
  monkeypatch.chdir(tmp_path)
  # A full-size ResNet-50 export (random weights) for the torchvision part.
  cfg = model_cfg(50, 1, 0.0, "imagenet", stage_sizes=None, base_widths=None,
                  sk_min_dim=None, proj_dim=128)
  export_lib.save_export("r50", random_variables(build_model(cfg, 1000), 32),
                       cfg, 1000, 32)
  exports = {"runs/mine/export": digits, "runs/r50_official": "r50"}
  _image_folder("my_images", True)
  rng = np.random.default_rng(0)
  for name in ("cat.jpg", "dog.jpg"):
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), np.uint8)).save(name)
  for line in _blocks("bash")[0].strip().splitlines():
    argv = shlex.split(line)
    flags = dict(a[2:].split("=", 1) for a in argv[3:])
    if argv[2] == "simclr_jax.export":
      writers.export_as(flags["format"], flags["out"],
                        export=exports[flags["export"]])
    else:
      assert argv[2] == "simclr_jax.embed", line
      embed.embed_folder(exports[flags["export"]], flags["images"],
                         flags["out"], progress=False)
  namespace = {}
  for block in _blocks("python"):
    exec(compile(block, DOCS, "exec"), namespace)  # pylint: disable=exec-used
  assert np.asarray(namespace["h"]).shape == (2, 64)
  err = rel_error(namespace["out"]["h"].numpy(), namespace["h"])
  assert err <= TOL, err  # ONNX Runtime and the PyTorch module agree
  assert namespace["keys"].missing_keys == []
  assert len(namespace["names"]) == 6 and set(namespace["labels"]) == {
      "cats", "dogs"}


# ------------------------- a converted official checkpoint, end to end

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "..", "shared", "fixtures", "official_simclr_tf2")


def test_official_checkpoint_exports_reproduce_the_official_outputs(
    tmp_path):
  """Official TF2 checkpoint -> convert -> ONNX / PyTorch: the official
  model's own outputs (computed by TensorFlow with its code), not ours."""
  if not os.path.isdir(FIXTURES):
    pytest.skip(f"official SimCLR TF2 fixtures not found at {FIXTURES}")
  ort = pytest.importorskip("onnxruntime")
  from simclr_jax.tools import convert  # pylint: disable=g-import-not-at-top
  export = str(tmp_path / "r18")
  convert.convert_to_export(os.path.join(FIXTURES, "r18_1x_sk0", "ckpt"),
                            export)
  expected = np.load(os.path.join(FIXTURES, "r18_1x_sk0", "expected.npz"))
  x = expected["images"].transpose(0, 3, 1, 2)
  lines = writers.export_as("onnx", str(tmp_path / "r18.onnx"),
                            export=export)
  assert "image size 224 px, centre crop 0.875" in "\n".join(lines)
  sess = ort.InferenceSession(str(tmp_path / "r18.onnx"),
                              providers=["CPUExecutionProvider"])
  h, z = sess.run(["h", "z"], {"images": x})
  assert rel_error(h, expected["final_avg_pool"]) <= TOL
  assert rel_error(z, expected["proj_head_output"]) <= TOL
  torch = pytest.importorskip("torch")
  out = str(tmp_path / "t" / "r18.safetensors")
  writers.export_as("torch", out, export=export)
  sys.path.insert(0, str(tmp_path / "t"))
  try:
    module = importlib.reload(importlib.import_module("simclr_jax_resnet"))
  finally:
    sys.path.pop(0)
  with torch.no_grad():
    got = module.load(out)(torch.from_numpy(x.copy()))
  assert rel_error(got["h"].numpy(), expected["final_avg_pool"]) <= TOL
  assert rel_error(got["z"].numpy(), expected["proj_head_output"]) <= TOL
  assert rel_error(got["logits"].numpy(), expected["logits_sup"]) <= TOL
