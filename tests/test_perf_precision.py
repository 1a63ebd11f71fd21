"""Mixed precision: bfloat16 compute, float32 parameters, statistics, outputs, loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import digits
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain

AXIS = parallel.AXIS


def _config(dtype):
  config = digits.get_config("tiny")
  config.model.stem = "cifar"
  config.model.dtype = dtype
  return config


@pytest.fixture(scope="module")
def setup():
  rng = np.random.default_rng(0)
  batch = {"images": rng.uniform(size=(8, 2, 16, 16, 3)).astype(np.float32),
           "labels": rng.integers(0, 10, 8).astype(np.int32)}
  variables = state_lib.init_variables(
      build_model(model_config(_config("bfloat16")), num_classes=10),
      16, seed=0)
  return batch, variables


def _grads(dtype, variables, batch):
  config = _config(dtype)
  model = build_model(model_config(config), num_classes=10,
                      axis_name=AXIS)
  mesh = parallel.make_mesh(jax.devices()[:1])
  fn = functools.partial(pretrain.pretrain_grads, model=model,
                         loss_cfg=config.loss, probe=True)
  mapped = jax.jit(parallel.per_replica(
      fn, mesh, in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P(), P())))
  return jax.device_get(mapped(variables["params"], variables["batch_stats"],
                               parallel.host_to_global(mesh, batch)))


def test_bfloat16_keeps_state_and_loss_in_float32(setup):
  batch, variables = setup
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == np.float32
  grads, stats, metrics = _grads("bfloat16", variables, batch)
  for tree in (grads, stats):
    for leaf in jax.tree.leaves(tree):
      assert leaf.dtype == np.float32
  for name in ("loss", "total_loss", "probe_loss"):
    assert metrics[name].dtype == np.float32, name
  # Within bfloat16 rounding (8 bits of mantissa) of the float32 model.
  ref_grads, _, ref_metrics = _grads("float32", variables, batch)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
  g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
  r = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref_grads)])
  cosine = g @ r / np.linalg.norm(g) / np.linalg.norm(r)
  assert cosine > 0.99


def test_bfloat16_convolutions_and_float32_outputs(setup):
  batch, variables = setup
  model = build_model(model_config(_config("bfloat16")), num_classes=10)
  x = jnp.asarray(batch["images"][:, 0])
  apply = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
  out, updates = apply(variables, x)
  for key in ("h", "z", "logits"):
    assert out[key].dtype == jnp.float32, key
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32
  jaxpr = str(jax.make_jaxpr(apply)(variables, x))
  convs = [line for line in jaxpr.splitlines()
           if "conv_general_dilated" in line]
  assert convs and all("bf16" in line.split("=")[0] for line in convs)
  dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
  assert dots and all("bf16" in line.split("=")[0] for line in dots)
