"""Gradient caching against unchunked autodiff on 8 devices (all negatives)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import digits
from simclr_jax.engine import gradcache
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain

AXIS = parallel.AXIS
RTOL = 1e-5


def _assert_tree_close(a, b, rtol=RTOL):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  # Chunked sums add in another order: entries that cancel to ~0 (1e-10 next
  # to gradients of 1e-2) get a floor relative to the largest gradient.
  scale = max(np.abs(np.asarray(y, np.float64)).max() for y in flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    atol = rtol * scale
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def setup():
  config = digits.get_config("tiny")
  config.model.stem = "cifar"
  config.train.global_batch = 32  # 4 images (8 views) per device
  model = build_model(model_config(config), num_classes=10,
                      axis_name=AXIS)
  variables = state_lib.init_variables(
      build_model(model_config(config), num_classes=10),
      config.data.image_size, seed=0)
  rng = np.random.default_rng(0)
  # Non-trivial statistics and BN scales so every path carries gradient.
  variables = jax.tree.map(
      lambda v: np.asarray(v) + rng.uniform(0.1, 0.5, np.shape(v)).astype(
          np.float32), variables)
  size = config.data.image_size
  batch = {"images": rng.uniform(size=(32, 2, size, size, 3)).astype(
      np.float32), "labels": rng.integers(0, 10, 32).astype(np.int32)}
  mesh = parallel.make_mesh()
  return config, model, variables, batch, mesh


def _map(fn, mesh, *args, in_specs):
  mapped = jax.jit(parallel.per_replica(fn, mesh, in_specs=in_specs,
                                        out_specs=P()))
  return jax.device_get(mapped(*args))


def _inference_grads(params, stats, batch, *, model, config, chunks):
  """Loss and pmean'd grads with BN in inference mode, chunked or not."""
  images, labels = batch["images"], batch["labels"]
  n, views = images.shape[:2]
  x = images.reshape((n * views,) + images.shape[2:])

  def forward(p, x):
    out = model.apply({"params": p, "batch_stats": stats}, x, train=False)
    return {"z": out["z"], "logits": out["logits"]}, ()

  def loss_fn(outputs):
    loss, _ = losses.for_config(config.loss)(
        outputs["z"].reshape(n, views, -1), labels, AXIS)
    probe = losses.cross_entropy(outputs["logits"], jnp.repeat(labels, views))
    return loss + probe, ()

  if chunks == 0:  # the reference: plain autodiff through the whole batch
    loss, grads = jax.value_and_grad(lambda p: loss_fn(forward(p, x)[0])[0])(
        params)
  else:
    (loss, _), grads, _ = gradcache.cached_value_and_grad(
        forward, loss_fn, params, x, chunks)
  return jax.lax.pmean((loss, grads), AXIS)


@pytest.fixture(scope="module")
def inference_run(setup):
  config, model, variables, batch, mesh = setup
  args = (parallel.replicate(mesh, variables["params"]),
          parallel.replicate(mesh, variables["batch_stats"]),
          parallel.host_to_global(mesh, batch))
  specs = (P(), P(), P(AXIS))
  run = lambda c: _map(functools.partial(
      _inference_grads, model=model, config=config, chunks=c), mesh, *args,
                       in_specs=specs)
  return run, run(0)


@pytest.mark.parametrize("chunks", [2, 4])
def test_inference_mode_bn_grads_equal_unchunked(inference_run, chunks):
  run, (ref_loss, ref_grads) = inference_run
  loss, grads = run(chunks)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  _assert_tree_close(grads, ref_grads)
  assert max(np.abs(g).max() for g in jax.tree.leaves(grads)) > 0


def _per_chunk_bn_reference(params, stats, batch, *, model, config, chunks):
  """Train-mode BN with statistics per chunk, by direct autodiff."""
  images, labels = batch["images"], batch["labels"]
  n, views = images.shape[:2]
  x = images.reshape((chunks, n * views // chunks) + images.shape[2:])

  def loss_fn(p):
    outs, new_stats = [], []
    for c in range(chunks):
      out, upd = model.apply({"params": p, "batch_stats": stats}, x[c],
                             train=True, mutable=["batch_stats"])
      outs.append(out)
      new_stats.append(upd["batch_stats"])
    z = jnp.concatenate([o["z"] for o in outs]).reshape(n, views, -1)
    logits = jnp.concatenate([o["logits"] for o in outs])
    loss, _ = losses.for_config(config.loss)(z, labels, AXIS)
    loss = loss + losses.cross_entropy(logits, jnp.repeat(labels, views))
    mean_stats = jax.tree.map(lambda *s: sum(s) / chunks, *new_stats)
    return loss, mean_stats

  (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return jax.lax.pmean(grads, AXIS), new_stats, jax.lax.pmean(loss, AXIS)


def test_train_mode_bn_is_per_chunk(setup):
  config, model, variables, batch, mesh = setup
  args = (parallel.replicate(mesh, variables["params"]),
          parallel.replicate(mesh, variables["batch_stats"]),
          parallel.host_to_global(mesh, batch))
  specs = (P(), P(), P(AXIS))
  step = lambda *a: (lambda g, s, m: (g, s, m["total_loss"]))(
      *pretrain.pretrain_grads(*a, model=model, loss_cfg=config.loss,
                               probe=True, grad_chunks=2))
  grads, stats, loss = _map(step, mesh, *args, in_specs=specs)
  ref = functools.partial(_per_chunk_bn_reference, model=model, config=config,
                          chunks=2)
  ref_grads, ref_stats, ref_loss = _map(ref, mesh, *args, in_specs=specs)
  np.testing.assert_allclose(loss, ref_loss, rtol=RTOL)
  _assert_tree_close(grads, ref_grads)
  _assert_tree_close(stats, ref_stats)


@pytest.mark.quick
@pytest.mark.parametrize("chunks", [0, 3, 2.0, True])
def test_bad_chunks_raise(chunks):
  with pytest.raises(ValueError, match="train.grad_chunks"):
    gradcache.check_chunks(4, chunks)
