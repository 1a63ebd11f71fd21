"""Tests of the ResNet encoders, heads and `build_model`.

References are independent: a float64 NumPy transcription of the official
SimCLR TF2 forward pass, TensorFlow's own pooling ops for its 'SAME' padding
conventions, hand-derived parameter counts and a single-device run for
global BatchNorm.
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simclr_jax import parallel
from simclr_jax.models import (build_model, count_params, representation_dim,
                               validate_model_config)

EPS = 1e-5
BASE = dict(depth=18, width=1, sk_ratio=0.0, stem="cifar", bn_momentum=0.9,
            bn_epsilon=EPS, head_layers=3, head_hidden_dim=0, proj_dim=6,
            sup_head_from=0, dtype="float32")
# Tiny nets: one or two blocks per stage and a handful of channels.
TINY_BASIC = dict(BASE, stage_sizes=[1, 2, 1, 1], base_widths=[4, 8, 8, 8])
TINY_SK = dict(BASE, depth=50, stem="imagenet", sk_ratio=0.25, head_layers=2,
               head_hidden_dim=5, stage_sizes=[2, 1, 1, 1],
               base_widths=[4, 4, 8, 8], sk_min_dim=3)
# The smallest net, for tests that compile a backward pass or two dtypes.
TINIEST = dict(BASE, stage_sizes=[1, 1, 1, 1], base_widths=[4, 4, 4, 4],
               head_layers=2)
NUM_CLASSES = 3


def _init(cfg, side, num_classes=NUM_CLASSES, seed=0, **kw):
  model = build_model(cfg, num_classes, **kw)
  x = jnp.zeros((2, side, side, 3), jnp.float32)
  init = jax.jit(functools.partial(model.init, train=False))
  return model, init(jax.random.key(seed), x)


def _apply(model, variables, x, train=False):
  """Jitted apply (one compile instead of one per op)."""
  if train:
    fn = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  else:
    fn = functools.partial(model.apply, train=False)
  return jax.jit(fn)(variables, x)


def _perturb(variables, seed):
  """Random values everywhere, so zero-init scales do not hide a branch."""
  rng = np.random.default_rng(seed)
  def leaf(path, x):
    name = path[-1].key
    x = np.asarray(x, np.float64)
    if name == "var":
      return rng.uniform(0.5, 1.5, x.shape)
    if name == "scale":
      return 1.0 + 0.3 * rng.standard_normal(x.shape)
    if name in ("bias", "mean"):
      return 0.2 * rng.standard_normal(x.shape)
    fan_in = int(np.prod(x.shape[:-1]))
    return rng.standard_normal(x.shape) / np.sqrt(fan_in)
  return jax.tree_util.tree_map_with_path(leaf, variables)


# ---------------------------------------------------------------- reference
def _np_conv(x, w, stride):
  """TF conv with fixed_padding (stride > 1) or 'SAME' (stride 1)."""
  k = w.shape[0]
  before, after = (k - 1) // 2, k - 1 - (k - 1) // 2
  x = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)))
  ho = (x.shape[1] - k) // stride + 1
  wo = (x.shape[2] - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
  for i in range(k):
    for j in range(k):
      patch = x[:, i:i + stride * (ho - 1) + 1:stride,
                j:j + stride * (wo - 1) + 1:stride]
      out += patch @ w[i, j]
  return out


def _np_pool(x, k, stride, before, after, op, fill):
  x = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)),
             constant_values=fill)
  ho = (x.shape[1] - k) // stride + 1
  wins = [x[:, i:i + stride * (ho - 1) + 1:stride,
            j:j + stride * (ho - 1) + 1:stride] for i in range(k)
          for j in range(k)]
  return op(np.stack(wins), axis=0)


def _np_max_pool_same(x, k, stride):
  """TF 'SAME': out = ceil(H / s), padding total split with less before."""
  size = x.shape[1]
  total = max((-(-size // stride) - 1) * stride + k - size, 0)
  return _np_pool(x, k, stride, total // 2, total - total // 2, np.max, -np.inf)


def _np_avg_pool_same_stride1(x, k):
  """TF 'SAME' average pooling divides by the number of real cells."""
  total = k - 1
  sums = _np_pool(x, k, 1, total // 2, total - total // 2, np.sum, 0.0)
  ones = _np_pool(np.ones_like(x[..., :1]), k, 1, total // 2,
                  total - total // 2, np.sum, 0.0)
  return sums / ones


def _np_bn(x, p, s):
  y = (x - s["mean"]) / np.sqrt(s["var"] + EPS) * p["scale"]
  return y + p["bias"] if "bias" in p else y


def _relu(x):
  return np.maximum(x, 0.0)


def _np_shortcut(x, p, s, stride, resnet_d):
  if resnet_d:
    if stride > 1:  # FixedPadding(2) then VALID pooling (zeros counted)
      x = _np_pool(x, 2, stride, 0, 1, np.mean, 0.0)
    else:
      x = _np_avg_pool_same_stride1(x, 2)
    stride = 1
  return _np_bn(_np_conv(x, p["proj_conv"]["kernel"], stride), p["proj_bn"],
                s["proj_bn"])


def _np_sk(x, p, s, stride):
  x = _relu(_np_bn(_np_conv(x, p["conv"]["kernel"], stride), p["bn"], s["bn"]))
  a, b = np.split(x, 2, axis=-1)
  g = (a + b).mean(axis=(1, 2), keepdims=True)
  g = _relu(_np_bn(_np_conv(g, p["fc1"]["kernel"], 1), p["fc1_bn"],
                   s["fc1_bn"]))
  m = _np_conv(g, p["fc2"]["kernel"], 1)
  ma, mb = np.split(m, 2, axis=-1)
  ea, eb = np.exp(ma), np.exp(mb)
  return a * ea / (ea + eb) + b * eb / (ea + eb)


def _np_forward(variables, x, cfg, num_classes):
  """Float64 transcription of official resnet.py + model.py (inference)."""
  p, s = variables["params"], variables["batch_stats"]
  pe, se = p["encoder"], s["encoder"]
  sk = cfg["sk_ratio"] > 0
  bottleneck = cfg["depth"] >= 50
  if cfg["stem"] == "cifar":
    x = _relu(_np_bn(_np_conv(x, pe["stem_conv0"]["kernel"], 1),
                     pe["stem_bn0"], se["stem_bn0"]))
  else:
    strides = (2, 1, 1) if sk else (2,)
    for i, st in enumerate(strides):
      x = _relu(_np_bn(_np_conv(x, pe[f"stem_conv{i}"]["kernel"], st),
                       pe[f"stem_bn{i}"], se[f"stem_bn{i}"]))
    x = _np_max_pool_same(x, 3, 2)
  for g, n in enumerate(cfg["stage_sizes"]):
    for b in range(n):
      bp, bs = pe[f"stage{g}_block{b}"], se[f"stage{g}_block{b}"]
      stride = (1 if g == 0 else 2) if b == 0 else 1
      short = _np_shortcut(x, bp, bs, stride, sk) if b == 0 else x
      if bottleneck:
        y = _relu(_np_bn(_np_conv(x, bp["conv1"]["kernel"], 1), bp["bn1"],
                         bs["bn1"]))
        if sk:
          y = _np_sk(y, bp["sk_conv"], bs["sk_conv"], stride)
        else:
          y = _relu(_np_bn(_np_conv(y, bp["conv2"]["kernel"], stride),
                           bp["bn2"], bs["bn2"]))
        y = _np_bn(_np_conv(y, bp["conv3"]["kernel"], 1), bp["bn3"], bs["bn3"])
      else:
        y = _relu(_np_bn(_np_conv(x, bp["conv1"]["kernel"], stride),
                         bp["bn1"], bs["bn1"]))
        y = _np_bn(_np_conv(y, bp["conv2"]["kernel"], 1), bp["bn2"], bs["bn2"])
      x = _relu(y + short)
  h = x.mean(axis=(1, 2))
  proj, z = [], h
  for k in range(cfg["head_layers"]):
    z = _np_bn(z @ p["head"][f"dense{k}"]["kernel"], p["head"][f"bn{k}"],
               s["head"][f"bn{k}"])
    z = _relu(z) if k < cfg["head_layers"] - 1 else z
    proj.append(z)
  feats = [h] + proj
  d = p["sup_head"]["dense"]
  logits = feats[cfg["sup_head_from"]] @ d["kernel"] + d["bias"]
  return h, proj, logits


def _rel(a, b):
  return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


@pytest.mark.quick
# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("cfg,side", [
    (TINY_BASIC, 16), (TINY_SK, 32), (dict(TINY_BASIC, stem="imagenet"), 32),
    # Fewer stages (the CPU recipes' three-stage net).
    (dict(TINY_BASIC, stage_sizes=[1, 2, 1], base_widths=[4, 8, 8]), 16)])
def test_forward_matches_numpy_reference(cfg, side):
  cfg = dict(cfg, sup_head_from=1)
  model, variables = _init(cfg, side)
  variables = _perturb(variables, seed=1)
  x = np.random.default_rng(2).uniform(0, 1, (2, side, side, 3))
  out = _apply(model, jax.tree.map(jnp.float32, variables), jnp.float32(x))
  h, proj, logits = _np_forward(variables, x, cfg, NUM_CLASSES)
  assert _rel(out["h"], h) < 1e-5
  assert len(out["proj"]) == cfg["head_layers"]
  for ours, ref in zip(out["proj"], proj):
    assert _rel(ours, ref) < 1e-5
  assert _rel(out["z"], proj[-1]) < 1e-5
  assert _rel(out["logits"], logits) < 1e-5


@pytest.mark.quick
def test_reference_pooling_follows_tensorflow():
  tf = pytest.importorskip("tensorflow")
  # TF's CPU pooling kernels compute in float32.
  x = np.random.default_rng(3).standard_normal((2, 9, 9, 3)).astype(np.float32)
  for size in (8, 9):
    xs = x[:, :size, :size]
    np.testing.assert_allclose(
        _np_max_pool_same(xs, 3, 2),
        tf.nn.max_pool2d(xs, 3, 2, "SAME").numpy(), rtol=0)
    np.testing.assert_allclose(
        _np_avg_pool_same_stride1(xs, 2),
        tf.nn.avg_pool2d(xs, 2, 1, "SAME").numpy(), rtol=1e-6)


def _standard_resnet_params(depth, cifar_stem=False):
  """Conv kernels + BN scale/offset, derived by hand from the architecture."""
  sizes = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}[depth]
  stem_k = 3 if cifar_stem else 7
  total = stem_k * stem_k * 3 * 64 + 2 * 64
  cin = 64
  for stage, n in enumerate(sizes):
    f = 64 * 2 ** stage
    for b in range(n):
      if depth == 18:
        total += 9 * cin * f + 2 * f + 9 * f * f + 2 * f
        cout = f
      else:
        cout = 4 * f
        total += cin * f + 2 * f + 9 * f * f + 2 * f + f * cout + 2 * cout
      if b == 0:  # the official code projects in every stage's first block
        total += cin * cout + 2 * cout
      cin = cout
  return total


@pytest.mark.quick
def test_param_counts():
  r18 = dict(BASE, stem="imagenet")
  r50 = dict(r18, depth=50)
  for cfg, depth, expected in ((r18, 18, 11_180_736), (r50, 50, 23_508_032)):
    model = build_model(cfg, 1000)
    shapes = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    enc = count_params(shapes["params"]["encoder"])
    assert enc == _standard_resnet_params(depth) == expected
    rep = representation_dim(cfg)
    head = 2 * (rep * rep + 2 * rep) + rep * 6 + 6
    assert count_params(shapes["params"]["head"]) == head
    assert count_params(shapes["params"]["sup_head"]) == rep * 1000 + 1000
  # torchvision's ResNet-18 without fc has 11,176,512: it lacks the official
  # 1x1 projection (+ BN) of the first stage.
  assert _standard_resnet_params(18) == 11_176_512 + 64 * 64 + 2 * 64
  model = build_model(BASE, 0)
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert (count_params(shapes["params"]["encoder"]) ==
          _standard_resnet_params(18, cifar_stem=True))
  assert "sup_head" not in shapes["params"]


@pytest.mark.quick
def test_init_conventions():
  cfg = dict(BASE, stem="imagenet", depth=50, width=1,
             stage_sizes=[1, 1, 1, 1], base_widths=[16, 32, 64, 128])
  model, v = _init(cfg, 32, num_classes=10)
  p, enc = v["params"], v["params"]["encoder"]
  assert set(p) == {"encoder", "head", "sup_head"}
  assert set(v["batch_stats"]) == {"encoder", "head"}
  for g in range(4):
    blk = enc[f"stage{g}_block0"]
    assert np.all(np.asarray(blk["bn3"]["scale"]) == 0)  # zero-init last BN
    assert np.all(np.asarray(blk["bn1"]["scale"]) == 1)
    assert np.all(np.asarray(blk["proj_bn"]["scale"]) == 1)
    assert set(blk["conv2"]) == {"kernel"}  # convolutions have no bias
  w = np.asarray(enc["stage3_block0"]["conv2"]["kernel"])  # 3x3x128x128
  assert abs(w.std() * np.sqrt(9 * 128) - 1) < 0.02  # LeCun: var = 1/fan_in
  assert abs(w.mean()) < 1e-3
  # Truncated at two standard deviations of the untruncated normal.
  assert np.abs(w).max() <= 2 * np.sqrt(1 / (9 * 128)) / 0.8796 + 1e-6
  dense = np.asarray(p["head"]["dense0"]["kernel"])
  assert set(p["head"]["dense0"]) == {"kernel"}
  assert abs(dense.std() / 0.01 - 1) < 0.02 and abs(dense.mean()) < 1e-4
  assert "bias" in p["head"]["bn0"] and "bias" not in p["head"]["bn2"]
  assert np.all(np.asarray(p["sup_head"]["dense"]["bias"]) == 0)
  sup = np.asarray(p["sup_head"]["dense"]["kernel"])
  assert abs(sup.std() / 0.01 - 1) < 0.05
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))


@pytest.mark.quick
def test_global_batchnorm_matches_single_device():
  mesh = parallel.make_mesh()
  n = len(mesh.devices.flat)
  x = np.random.default_rng(4).uniform(0, 1, (2 * n, 16, 16, 3))
  x = x.astype(np.float32)
  ref_model, v = _init(TINY_BASIC, 16)
  v = jax.tree.map(jnp.float32, _perturb(v, seed=5))
  ref, ref_vars = _apply(ref_model, v, x, train=True)
  model = build_model(TINY_BASIC, NUM_CLASSES, axis_name=parallel.AXIS)
  local_model = build_model(TINY_BASIC, NUM_CLASSES)
  def step(m, v, x):
    out, new = m.apply(v, x, train=True, mutable=["batch_stats"])
    return out, new
  P = jax.sharding.PartitionSpec
  outs = []
  for m in (model, local_model):
    fn = parallel.per_replica(functools.partial(step, m), mesh,
                              in_specs=(P(), P(parallel.AXIS)),
                              out_specs=(P(parallel.AXIS), P()))
    outs.append(jax.jit(fn)(parallel.replicate(mesh, v),
                            parallel.host_to_global(mesh, x)))
  (out, new), (local_out, _) = outs
  for key in ("h", "z", "logits"):
    np.testing.assert_allclose(out[key], ref[key], rtol=2e-4, atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4,
                                                       atol=1e-6),
               parallel.to_host(new), ref_vars)
  # Per-device statistics give different outputs: the test can tell.
  assert _rel(local_out["z"], np.asarray(ref["z"])) > 1e-2


@pytest.mark.quick
def test_batch_stats_update_rule():
  model, v = _init(TINY_BASIC, 16)
  v = jax.tree.map(jnp.float32, _perturb(v, seed=6))
  x = np.random.default_rng(7).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
  out, new = _apply(model, v, x, train=True)
  pre = np.asarray(out["h"], np.float64) @ np.asarray(
      v["params"]["head"]["dense0"]["kernel"], np.float64)
  old = v["batch_stats"]["head"]["bn0"]
  mom = TINY_BASIC["bn_momentum"]
  want_mean = mom * np.asarray(old["mean"]) + (1 - mom) * pre.mean(0)
  want_var = mom * np.asarray(old["var"]) + (1 - mom) * pre.var(0)  # biased
  got = new["batch_stats"]["head"]["bn0"]
  np.testing.assert_allclose(got["mean"], want_mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["var"], want_var, rtol=1e-4, atol=1e-6)
  # Training mode normalises with batch statistics.
  z0 = (pre - pre.mean(0)) / np.sqrt(pre.var(0) + EPS)
  bn0 = v["params"]["head"]["bn0"]
  want = np.maximum(z0 * np.asarray(bn0["scale"]) + np.asarray(bn0["bias"]), 0)
  assert _rel(out["proj"][0], want) < 1e-4


def test_bfloat16_compute_keeps_float32_state():
  cfg16 = dict(TINIEST, dtype="bfloat16")
  model, v = _init(TINIEST, 16)
  v = jax.tree.map(jnp.float32, _perturb(v, seed=8))
  model16 = build_model(cfg16, NUM_CLASSES)
  _, v16 = _init(cfg16, 16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v16))
  x = np.random.default_rng(9).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
  ref = _apply(model, v, x)
  out, new = _apply(model16, v, x, train=True)
  out_eval = _apply(model16, v, x)
  for key in ("h", "z", "logits"):
    assert out_eval[key].dtype == jnp.float32 and out[key].dtype == jnp.float32
    assert _rel(out_eval[key], np.asarray(ref[key])) < 5e-2
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new))


@pytest.mark.quick
def test_supervised_head_input_and_stop_gradient():
  x = np.random.default_rng(10).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  for stop in (True, False):
    cfg = dict(TINIEST, sup_head_from=2)
    model, v = _init(cfg, 16, sup_stop_gradient=stop)
    v = jax.tree.map(jnp.float32, _perturb(v, seed=11))
    out = _apply(model, v, x)
    d = v["params"]["sup_head"]["dense"]
    want = np.asarray(out["proj"][1], np.float64) @ np.asarray(
        d["kernel"], np.float64) + np.asarray(d["bias"])
    assert _rel(out["logits"], want) < 1e-5
    grads = jax.jit(jax.grad(lambda p: model.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, x,
        train=False)["logits"].sum()))(v["params"])
    enc = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(
        {"encoder": grads["encoder"], "head": grads["head"]}))
    assert (enc == 0.0) == stop
    assert float(jnp.abs(grads["sup_head"]["dense"]["kernel"]).max()) > 0


@pytest.mark.quick
def test_configdict_and_representation_dim():
  cfg = ml_collections.ConfigDict(dict(BASE, depth=50, width=2,
                                       auto_stem_max_size=64))
  assert representation_dim(cfg) == 2048 * 2
  assert representation_dim(BASE) == 512
  assert validate_model_config(cfg)["depth"] == 50
  assert "auto_stem_max_size" not in validate_model_config(cfg)


@pytest.mark.quick
@pytest.mark.parametrize("field,value", [
    ("depth", 20), ("width", 0), ("width", 1.5), ("stem", "auto"),
    ("stem", "tiny"), ("sk_ratio", -0.1), ("bn_momentum", 1.0),
    ("bn_epsilon", 0.0), ("head_layers", 0), ("head_hidden_dim", -1),
    ("proj_dim", 0), ("sup_head_from", 4), ("dtype", "float16"),
    ("stage_sizes", [1, 1, 1]), ("base_widths", [4, 0, 4, 4]),
    ("stage_sizes", []), ("base_widths", [4, 4, 4, 4, 4]),
])
def test_build_model_rejects_bad_fields(field, value):
  with pytest.raises(ValueError, match=re.escape(f"model.{field}={value!r}")):
    build_model(dict(BASE, **{field: value}), 10)


@pytest.mark.quick
def test_stage_count_must_agree_and_fit_the_strides():
  with pytest.raises(ValueError, match=re.escape(
      "model.stage_sizes=[1, 1, 1]") + ".*one entry per stage of "
                     r"model.base_widths=\(64, 128, 256, 512\)"):
    build_model(dict(BASE, stage_sizes=[1, 1, 1]), 10)
  with pytest.raises(ValueError, match="1 to 4 positive integers"):
    build_model(dict(BASE, stage_sizes=[1] * 5, base_widths=[4] * 5), 10)
  cfg = dict(BASE, stage_sizes=[1, 1, 1], base_widths=[4, 8, 16])
  assert validate_model_config(cfg)["base_widths"] == [4, 8, 16]
  assert representation_dim(cfg) == 16


@pytest.mark.quick
def test_build_model_rejects_missing_field_and_classes():
  cfg = dict(BASE)
  del cfg["proj_dim"]
  with pytest.raises(ValueError, match="model.proj_dim is missing"):
    build_model(cfg, 10)
  with pytest.raises(ValueError, match="num_classes=-1"):
    build_model(BASE, -1)
