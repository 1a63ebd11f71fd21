"""Tests of the official SimCLR TF2 checkpoint import.

The fixtures (made with the official code) live next to the repository in
`../shared/fixtures/official_simclr_tf2/`; tests that need them skip, saying
so, only when that folder is absent.
"""

import functools
import hashlib
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from simclr_jax.exports import format as export_lib
from simclr_jax.tools import convert_map
from simclr_jax.tools.convert import (convert_tf2_checkpoint, match_variables,
                                model_leaf_shapes)
from simclr_jax.models import build_model, count_params

tf = pytest.importorskip("tensorflow")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "..", "shared", "fixtures", "official_simclr_tf2")
needs_fixtures = pytest.mark.skipif(
    not os.path.isdir(FIXTURES),
    reason=f"official SimCLR TF2 fixtures not found at {FIXTURES}")
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
R = "model/resnet_model"


def _read_variables_txt(name):
  shapes = {}
  with open(os.path.join(FIXTURES, name, "variables.txt")) as f:
    for line in f:
      key, shape = line.rstrip("\n").split("\t")
      shapes[key] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
  return shapes


def _write_checkpoint(prefix, tensors):
  """An object-based-style checkpoint with exactly these keys."""
  names = list(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[""] * len(names),
                    tensors=[tensors[n] for n in names])
  return prefix


def _leaf(variables, path):
  for k in path:
    variables = variables[k]
  return np.asarray(variables)


def _rel(a, b):
  return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def r18():
  if not os.path.isdir(FIXTURES):
    pytest.skip(f"official SimCLR TF2 fixtures not found at {FIXTURES}")
  path = os.path.join(FIXTURES, "r18_1x_sk0", "ckpt")
  return path, convert_tf2_checkpoint(path)


@needs_fixtures
def test_r18_outputs_match_official(r18):
  _, (variables, cfg, num_classes) = r18
  assert (cfg["depth"], cfg["width"], cfg["sk_ratio"], cfg["stem"]) == (
      18, 1, 0.0, "imagenet")
  assert (cfg["head_layers"], cfg["proj_dim"], num_classes) == (3, 128, 10)
  expected = np.load(os.path.join(FIXTURES, "r18_1x_sk0", "expected.npz"))
  model = build_model(cfg, num_classes)
  out = jax.jit(functools.partial(model.apply, train=False))(
      variables, expected["images"])
  assert _rel(out["h"], expected["final_avg_pool"]) < 1e-5
  for k in range(3):
    assert _rel(out["proj"][k], expected[f"proj_head_layer_{k}"]) < 1e-5
  assert _rel(out["z"], expected["proj_head_output"]) < 1e-5
  assert _rel(out["logits"], expected["logits_sup"]) < 1e-5


@needs_fixtures
def test_command_line_writes_export(r18, tmp_path):
  path, (variables, cfg, num_classes) = r18
  out = str(tmp_path / "export")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax.convert", f"--tf2_checkpoint={path}",
       f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  loaded, meta = export_lib.load_export(out)
  assert meta["model"] == cfg and meta["num_classes"] == num_classes == 10
  assert meta["image_size"] == 224
  flat_a = jax.tree_util.tree_leaves_with_path(variables)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(loaded))
  assert len(flat_a) == len(flat_b)
  for p, a in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_b[p]), a)


@pytest.mark.quick
@needs_fixtures
@pytest.mark.parametrize("name,depth,sk_ratio", [
    ("r18_1x_sk0", 18, 0.0), ("r50_1x_sk0", 50, 0.0),
    ("r50_1x_sk1", 50, 0.0625)])
def test_official_variable_lists_map_one_to_one(name, depth, sk_ratio):
  shapes = {convert_map.variable_name(k): v
            for k, v in _read_variables_txt(name).items()}
  cfg, num_classes = convert_map.infer_config(shapes)
  assert (cfg["depth"], cfg["width"], cfg["sk_ratio"]) == (depth, 1, sk_ratio)
  assert (cfg["stem"], cfg["head_layers"], num_classes) == ("imagenet", 3, 10)
  mapping = match_variables(shapes, cfg, num_classes)
  assert set(mapping) == set(shapes)
  # Trainable scalars: every variable except the BN moving statistics.
  trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                  if "/moving_" not in k)
  leaves = model_leaf_shapes(cfg, num_classes)
  ours = sum(int(np.prod(s)) for k, s in leaves.items() if k[0] == "params")
  assert ours == trainable


# Official name -> our leaf, written out by hand from the official layer
# lists, on positions where a wrong index would still fit by shape.
SAMPLES = {
    "r50_1x_sk0": {
        f"{R}/initial_conv_relu_max_pool/0/conv2d/kernel":
            ("params", "encoder", "stem_conv0", "kernel"),
        f"{R}/initial_conv_relu_max_pool/2/bn/moving_variance":
            ("batch_stats", "encoder", "stem_bn0", "var"),
        f"{R}/block_groups/2/layers/3/conv_relu_dropblock_layers/1/bn/gamma":
            ("params", "encoder", "stage2_block3", "bn1", "scale"),
        f"{R}/block_groups/2/layers/3/conv_relu_dropblock_layers/4/bn/beta":
            ("params", "encoder", "stage2_block3", "bn2", "bias"),
        f"{R}/block_groups/2/layers/3/conv_relu_dropblock_layers/7/bn/"
        "moving_mean": ("batch_stats", "encoder", "stage2_block3", "bn3",
                        "mean"),
        f"{R}/block_groups/1/layers/0/projection_layers/1/bn/gamma":
            ("params", "encoder", "stage1_block0", "proj_bn", "scale"),
        "model/_projection_head/linear_layers/1/bn_relu/bn/beta":
            ("params", "head", "bn1", "bias"),
        "model/_projection_head/linear_layers/0/dense/kernel":
            ("params", "head", "dense0", "kernel"),
        "model/supervised_head/linear_layer/dense/bias":
            ("params", "sup_head", "dense", "bias"),
    },
    "r50_1x_sk1": {
        f"{R}/initial_conv_relu_max_pool/2/conv2d/kernel":
            ("params", "encoder", "stem_conv1", "kernel"),
        f"{R}/initial_conv_relu_max_pool/3/bn/moving_mean":
            ("batch_stats", "encoder", "stem_bn1", "mean"),
        f"{R}/initial_conv_relu_max_pool/6/bn/gamma":
            ("params", "encoder", "stem_bn2", "scale"),
        f"{R}/block_groups/0/layers/0/projection_layers/1/conv2d/kernel":
            ("params", "encoder", "stage0_block0", "proj_conv", "kernel"),
        f"{R}/block_groups/3/layers/0/projection_layers/3/bn/gamma":
            ("params", "encoder", "stage3_block0", "proj_bn", "scale"),
        f"{R}/block_groups/1/layers/2/conv_relu_dropblock_layers/1/bn/gamma":
            ("params", "encoder", "stage1_block2", "bn1", "scale"),
        f"{R}/block_groups/1/layers/2/conv_relu_dropblock_layers/3/"
        "batch_norm_relu/bn/gamma": ("params", "encoder", "stage1_block2",
                                     "sk_conv", "bn", "scale"),
        f"{R}/block_groups/1/layers/2/conv_relu_dropblock_layers/3/"
        "batch_norm_relu_1/bn/moving_variance": (
            "batch_stats", "encoder", "stage1_block2", "sk_conv", "fc1_bn",
            "var"),
        f"{R}/block_groups/1/layers/2/conv_relu_dropblock_layers/3/"
        "conv2d_1/kernel": ("params", "encoder", "stage1_block2", "sk_conv",
                            "fc2", "kernel"),
        f"{R}/block_groups/1/layers/2/conv_relu_dropblock_layers/6/bn/beta":
            ("params", "encoder", "stage1_block2", "bn3", "bias"),
        "model/_projection_head/linear_layers/2/bn_relu/bn/gamma":
            ("params", "head", "bn2", "scale"),
    },
}


@needs_fixtures
@pytest.mark.parametrize("name", ["r50_1x_sk0", "r50_1x_sk1"])
def test_synthetic_r50_checkpoint_imports_every_variable_once(name, tmp_path):
  rng = np.random.default_rng(0)
  tensors = {k: rng.standard_normal(s, dtype=np.float32)
             for k, s in _read_variables_txt(name).items()}
  model_keys = list(tensors)
  slot = (f"{R}/block_groups/0/layers/0/conv_relu_dropblock_layers/0/conv2d/"
          "kernel/.OPTIMIZER_SLOT/optimizer/momentum" + SUFFIX)
  tensors[slot] = rng.standard_normal((1, 1, 64, 64), dtype=np.float32)
  tensors["save_counter" + SUFFIX] = np.int64(1)
  tensors["global_step" + SUFFIX] = np.int64(1000)
  tensors["optimizer/iter" + SUFFIX] = np.int64(1000)
  tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(b"graph")
  prefix = _write_checkpoint(str(tmp_path / "ckpt-1000"), tensors)
  variables, cfg, num_classes = convert_tf2_checkpoint(prefix)
  assert (cfg["depth"], num_classes) == (50, 10)
  digest = {hashlib.sha1(tensors[k].tobytes()).hexdigest(): k
            for k in model_keys}
  assert len(digest) == len(model_keys)
  hit = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    leaf = np.asarray(leaf)
    key = digest.get(hashlib.sha1(leaf.tobytes()).hexdigest())
    assert key is not None, f"{path} holds no checkpoint value"
    assert tensors[key].shape == leaf.shape
    hit.append(key)
  assert sorted(hit) == sorted(model_keys)  # each variable exactly once
  for official, ours in SAMPLES[name].items():
    np.testing.assert_array_equal(_leaf(variables, ours),
                                  tensors[official + SUFFIX])


TINY = dict(depth=50, width=1, sk_ratio=0.25, stem="imagenet",
            bn_momentum=0.9, bn_epsilon=1e-5, head_layers=3,
            head_hidden_dim=5, proj_dim=4, sup_head_from=1, dtype="float32",
            stage_sizes=[1, 2, 1, 1], base_widths=[8, 8, 16, 16],
            sk_min_dim=4)
TINY_OVERRIDES = {k: TINY[k] for k in ("stage_sizes", "base_widths",
                                       "sk_min_dim")}
TINY_OVERRIDES["depth"] = 50


def _tiny_tensors():
  mapping = convert_map.official_variable_map(TINY, 3)
  shapes = model_leaf_shapes(TINY, 3)
  rng = np.random.default_rng(1)
  return {k + SUFFIX: rng.standard_normal(shapes[leaf], dtype=np.float32)
          for k, leaf in mapping.items()}


@pytest.mark.quick
def test_tiny_checkpoint_round_trip(tmp_path):
  tensors = _tiny_tensors()
  prefix = _write_checkpoint(str(tmp_path / "ckpt"), tensors)
  variables, cfg, num_classes = convert_tf2_checkpoint(prefix, TINY_OVERRIDES)
  # sk_ratio, width, stem, head widths and the head input are inferred.
  assert cfg == TINY and num_classes == 3
  assert count_params(variables) == sum(v.size for v in tensors.values())
  # Where each value landed, found by its bytes (every tensor is distinct
  # random data): each leaf holds exactly one checkpoint tensor, and the
  # official name says where it must be, by rules written here (not the
  # converter's map), so two same-shaped leaves swapped fail.
  digest = {hashlib.sha1(v.tobytes()).hexdigest(): k[:-len(SUFFIX)]
            for k, v in tensors.items()}
  assert len(digest) == len(tensors)
  where = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    key = digest.get(hashlib.sha1(np.asarray(leaf).tobytes()).hexdigest())
    assert key is not None and key not in where, jax.tree_util.keystr(path)
    where[key] = tuple(p.key for p in path)
  assert len(where) == len(tensors)
  ending = {"gamma": ("params", "scale"), "beta": ("params", "bias"),
            "moving_mean": ("batch_stats", "mean"),
            "moving_variance": ("batch_stats", "var"),
            "kernel": ("params", "kernel"), "bias": ("params", "bias")}
  for name, leaf in where.items():
    kind, last = ending[name.rsplit("/", 1)[1]]
    assert (leaf[0], leaf[-1]) == (kind, last), (name, leaf)
    group = re.search(r"block_groups/(\d+)/layers/(\d+)/", name)
    if group:
      assert leaf[1:3] == ("encoder", f"stage{group[1]}_block{group[2]}"), (
          name, leaf)
    head = re.search(r"_projection_head/linear_layers/(\d+)/", name)
    if head:
      want = "dense" if "/dense/" in name else "bn"
      assert leaf[1:3] == ("head", want + head[1]), (name, leaf)
    if "supervised_head" in name:
      assert leaf[1] == "sup_head", (name, leaf)
  # Inside a block and the stem, by the official layer order (selective
  # kernels, bottleneck): positions a wrong index would still fit by shape.
  b = f"{R}/block_groups/1/layers/1/conv_relu_dropblock_layers"
  for official, ours in {
      f"{R}/initial_conv_relu_max_pool/2/conv2d/kernel":
          ("params", "encoder", "stem_conv1", "kernel"),
      f"{R}/initial_conv_relu_max_pool/6/bn/gamma":
          ("params", "encoder", "stem_bn2", "scale"),
      f"{b}/1/bn/gamma": ("params", "encoder", "stage1_block1", "bn1",
                          "scale"),
      f"{b}/6/bn/beta": ("params", "encoder", "stage1_block1", "bn3", "bias"),
      f"{b}/3/conv2d_1/kernel": ("params", "encoder", "stage1_block1",
                                 "sk_conv", "fc2", "kernel"),
      f"{R}/block_groups/1/layers/0/projection_layers/3/bn/gamma":
          ("params", "encoder", "stage1_block0", "proj_bn", "scale"),
      f"{R}/block_groups/0/layers/0/projection_layers/1/conv2d/kernel":
          ("params", "encoder", "stage0_block0", "proj_conv", "kernel"),
  }.items():
    assert where[official] == ours, (official, where[official])


@pytest.mark.quick
@pytest.mark.parametrize("change", ["missing", "extra", "shape"])
def test_bad_checkpoint_names_the_variable(change, tmp_path):
  tensors = _tiny_tensors()
  victim = (f"{R}/block_groups/1/layers/1/conv_relu_dropblock_layers/3/"
            "conv2d_1/kernel")
  if change == "missing":
    del tensors[victim + SUFFIX]
    message = f"missing checkpoint variable {victim}"
  elif change == "extra":
    victim = f"{R}/block_groups/1/layers/1/se_layer/se_reduce/kernel"
    tensors[victim + SUFFIX] = np.zeros((1, 1, 8, 2), np.float32)
    message = f"unmapped checkpoint variable {victim}"
  else:
    victim = (f"{R}/block_groups/2/layers/0/conv_relu_dropblock_layers/0/"
              "conv2d/kernel")
    tensors[victim + SUFFIX] = np.zeros((1, 1, 32, 17), np.float32)
    message = f"shape mismatch: checkpoint variable {victim}"
  prefix = _write_checkpoint(str(tmp_path / "ckpt"), tensors)
  with pytest.raises(ValueError, match=message):
    convert_tf2_checkpoint(prefix, TINY_OVERRIDES)


@pytest.mark.quick
def test_wrong_override_and_foreign_checkpoint_fail(tmp_path):
  prefix = _write_checkpoint(str(tmp_path / "ckpt"), _tiny_tensors())
  with pytest.raises(ValueError, match="shape mismatch: checkpoint variable "
                     f"{R}/block_groups/0/layers/0/conv_relu_dropblock_layers/"
                     "3/conv2d_0/kernel"):
    convert_tf2_checkpoint(prefix, dict(TINY_OVERRIDES, sk_ratio=0.75))
  with pytest.raises(ValueError, match="stage"):
    convert_tf2_checkpoint(prefix)  # non-standard blocks per stage
  other = _write_checkpoint(str(tmp_path / "other"), {
      "net/dense/kernel" + SUFFIX: np.zeros((2, 2), np.float32)})
  with pytest.raises(ValueError, match="not an official SimCLR"):
    convert_tf2_checkpoint(other)
