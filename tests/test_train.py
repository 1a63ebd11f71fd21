"""The pretraining step: 1 device and 8 devices agree on the same global batch."""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import digits
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain

AXIS = parallel.AXIS


def _tiny_config() -> ml_collections.ConfigDict:
  config = digits.get_config("tiny")
  config.model.stem = "cifar"
  return config


def _grads_on(devices, config, variables, batch):
  """Gradients, new BN statistics and metrics of one step on `devices`."""
  mesh = parallel.make_mesh(devices)
  model = build_model(model_config(config), num_classes=10,
                      axis_name=AXIS)
  fn = functools.partial(pretrain.pretrain_grads, model=model,
                         loss_cfg=config.loss, probe=True)
  mapped = jax.jit(parallel.per_replica(
      fn, mesh, in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P(), P())))
  out = mapped(parallel.replicate(mesh, variables["params"]),
               parallel.replicate(mesh, variables["batch_stats"]),
               parallel.host_to_global(mesh, batch))
  return jax.device_get(out)


def _assert_tree_close(a, b, rtol):
  flat_a = jax.tree_util.tree_leaves_with_path(a)
  flat_b = jax.tree_util.tree_leaves(b)
  assert len(flat_a) == len(flat_b)
  for (path, x), y in zip(flat_a, flat_b):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # Sums are reduced in a different order on 8 devices; the absolute floor
    # is relative to the leaf's scale so that near-zero entries do not fail.
    atol = rtol * max(np.abs(y).max(), 1e-12)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def setup():
  config = _tiny_config()
  model = build_model(model_config(config), num_classes=10)
  variables = state_lib.init_variables(model, config.data.image_size, seed=0)
  rng = np.random.default_rng(0)
  size = config.data.image_size
  batch = {"images": rng.uniform(size=(16, 2, size, size, 3)).astype(
      np.float32), "labels": rng.integers(0, 10, size=16).astype(np.int32)}
  return config, variables, batch


@pytest.mark.quick
def test_one_vs_eight_devices_same_loss_grads_and_bn_stats(setup):
  config, variables, batch = setup
  assert jax.device_count() == 8
  g1, s1, m1 = _grads_on(jax.devices()[:1], config, variables, batch)
  g8, s8, m8 = _grads_on(jax.devices(), config, variables, batch)
  for key in ("loss", "total_loss", "probe_loss", "contrast_acc_all_columns"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  _assert_tree_close(g8, g1, rtol=1e-5)
  _assert_tree_close(s8, s1, rtol=1e-5)
  # The statistics moved: the step really updated them (momentum 0.9).
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), s1,
                       variables["batch_stats"])
  assert max(jax.tree.leaves(moved)) > 0


def test_full_step_updates_state_identically(setup):
  config, variables, batch = setup
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    model = build_model(model_config(config), num_classes=10,
                        axis_name=AXIS)
    schedule = optim.make_schedule(0.1, total_steps=10, warmup_steps=0)
    tx = optim.make_optimizer(config.optim, schedule)
    state = state_lib.TrainState(step=np.zeros((), np.int32),
                             params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             opt_state=tx.init(variables["params"]))
    state = parallel.replicate(mesh, state)
    step = pretrain.make_pretrain_step(model, tx, config.loss, True, schedule,
                                    mesh)
    state, metrics = step(state, parallel.host_to_global(mesh, batch))
    results.append((jax.device_get(state), jax.device_get(metrics)))
  (s1, m1), (s8, m8) = results
  assert int(s1.step) == int(s8.step) == 1
  np.testing.assert_allclose(m8["learning_rate"], m1["learning_rate"])
  _assert_tree_close(s8.params, s1.params, rtol=1e-5)
  # Everything the step writes agrees: BatchNorm statistics (global over the
  # 8 devices) and the optimizer state (LARS momentum), not only params.
  _assert_tree_close(s8.batch_stats, s1.batch_stats, rtol=1e-5)
  assert (jax.tree.structure(s8.opt_state) ==
          jax.tree.structure(s1.opt_state))
  _assert_tree_close(s8.opt_state, s1.opt_state, rtol=1e-5)
  # And the step did something: every trained kernel and the statistics
  # moved, so agreeing on unchanged state cannot pass.
  for name, before, after in (("params", variables["params"], s1.params),
                              ("batch_stats", variables["batch_stats"],
                               s1.batch_stats)):
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(after),
                            jax.tree.leaves(before)):
      key = jax.tree_util.keystr(path)
      if name == "params" and not key.endswith("['kernel']"):
        continue  # zero-initialised BN scales may get no gradient at step 1
      assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0, name + key
