"""The official objectives, against float64 NumPy transcriptions of the references.

The references transcribe the official code line by line, independently of the
library: google-research/simclr `tf2/objective.py` (add_contrastive_loss),
`tf2/metrics.py` (contrast_acc), `tf2/lars_optimizer.py` with the exclusions of
`tf2/model.py` (build_optimizer, add_weight_decay) and the loss of
`tf2/run.py`; HobbitLong/SupContrast `losses.py` (SupConLoss).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import cifar10
from configs import cifar10_supcon
from configs import imagenet
from simclr_jax import config as config_lib
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain

AXIS = parallel.AXIS
LARGE_NUM = 1e9  # tf2/objective.py


def _l2_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax_xent(labels, logits):
  """tf.nn.softmax_cross_entropy_with_logits, float64."""
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  return -(labels * log_prob).sum(axis=1)


def np_official_contrastive(z, tau, replicas):
  """add_contrastive_loss on each replica; returns (losses, contrast_accs).

  z: the global batch [N, 2, d], replica r holding images r*n .. (r+1)*n - 1,
  whose first views are `hidden1` and second views `hidden2`.
  """
  h = _l2_normalize(np.asarray(z, np.float64))
  hidden1_large, hidden2_large = h[:, 0], h[:, 1]
  big = len(h)
  n = big // replicas
  out_loss, out_acc = [], []
  for r in range(replicas):
    hidden1, hidden2 = hidden1_large[r * n:(r + 1) * n], hidden2_large[
        r * n:(r + 1) * n]
    labels_idx = np.arange(n) + r * n
    labels = np.eye(big * 2)[labels_idx]
    masks = np.eye(big)[labels_idx]
    logits_aa = hidden1 @ hidden1_large.T / tau - masks * LARGE_NUM
    logits_bb = hidden2 @ hidden2_large.T / tau - masks * LARGE_NUM
    logits_ab = hidden1 @ hidden2_large.T / tau
    logits_ba = hidden2 @ hidden1_large.T / tau
    loss_a = _softmax_xent(labels, np.concatenate([logits_ab, logits_aa], 1))
    loss_b = _softmax_xent(labels, np.concatenate([logits_ba, logits_bb], 1))
    out_loss.append(np.mean(loss_a + loss_b))
    # tf2/metrics.py: argmax(labels_con) == argmax(logits_con = logits_ab).
    out_acc.append(np.mean(labels.argmax(1) == logits_ab.argmax(1)))
  return np.array(out_loss), np.array(out_acc)


def np_all_columns_acc(z):
  """Every anchor: is its highest non-self column the other view?"""
  h = _l2_normalize(np.asarray(z, np.float64)).reshape(-1, z.shape[-1])
  views = z.shape[1]
  hits = []
  for i in range(len(h)):
    others = [k for k in range(len(h)) if k != i]
    best = others[int(np.argmax(h[others] @ h[i]))]
    hits.append(best // views == i // views)
  return np.mean(hits)


def _per_device(loss_cfg, z, devices):
  """Per-device loss and pmean'd metrics of for_config on `devices`."""
  mesh = parallel.make_mesh(jax.devices()[:devices])
  fn = losses.for_config(loss_cfg)
  labels = jnp.zeros(z.shape[:1], jnp.int32)

  def replica(z, labels):
    loss, metrics = fn(z, labels, AXIS)
    return loss[None], jax.lax.pmean(metrics, AXIS)

  mapped = jax.jit(parallel.per_replica(
      replica, mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(AXIS), P())))
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.device_get(mapped(jax.device_put(jnp.asarray(z), sharding),
                               jax.device_put(labels, sharding)))


@pytest.mark.quick
@pytest.mark.parametrize("make_config", [cifar10.get_config,
                                         imagenet.get_config])
@pytest.mark.parametrize("devices", [1, 8])
def test_official_configs_loss_is_add_contrastive_loss(make_config, devices):
  config = make_config()
  assert config.loss.official_scale and config.optim.decay_sup_head
  z = np.random.default_rng(devices).normal(size=(16, 2, 8)).astype(
      np.float32)
  per_device, metrics = _per_device(config.loss, z, devices)
  want, want_acc = np_official_contrastive(z, config.loss.temperature,
                                           devices)
  # Each replica's loss is the official replica loss; the step
  # differentiates their mean, as the official summed gradients of loss / R.
  np.testing.assert_allclose(per_device, want, rtol=2e-5)
  np.testing.assert_allclose(metrics["contrast_acc_cross_view"],
                             want_acc.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["contrast_acc_all_columns"],
                             np_all_columns_acc(z), rtol=1e-6)


@pytest.mark.quick
def test_accuracies_differ_on_a_hand_made_batch():
  # Image 0's views point one way; image 1's first view is a near copy of
  # image 0's first view, its second view points elsewhere.
  e = np.eye(3, dtype=np.float32)
  z = np.stack([np.stack([e[0], e[0] + 0.5 * e[1]]),
                np.stack([e[0] + 0.05 * e[2], e[2]]),
                np.stack([e[1], e[1] + 0.1 * e[2]]),
                np.stack([e[2] + 0.2 * e[1], e[2] + 0.3 * e[0]])])
  _, metrics = _per_device(cifar10.get_config().loss, z, 1)
  _, want_cross = np_official_contrastive(z, 0.5, 1)
  want_all = np_all_columns_acc(z)
  assert want_cross[0] != want_all  # the batch tells the two apart
  np.testing.assert_allclose(metrics["contrast_acc_cross_view"],
                             want_cross[0], rtol=1e-6)
  np.testing.assert_allclose(metrics["contrast_acc_all_columns"], want_all,
                             rtol=1e-6)


def np_supcontrast(z, labels, tau, base_temperature):
  """SupConLoss(contrast_mode='all') of HobbitLong/SupContrast, float64."""
  n, views, _ = z.shape
  feats = _l2_normalize(np.asarray(z, np.float64))
  contrast = np.concatenate([feats[:, v] for v in range(views)])  # view-major
  lab = np.tile(np.asarray(labels), views)
  mask = (lab[:, None] == lab[None, :]).astype(np.float64)
  logits = contrast @ contrast.T / tau
  logits = logits - logits.max(axis=1, keepdims=True)
  logits_mask = 1.0 - np.eye(n * views)
  mask = mask * logits_mask
  exp_logits = np.exp(logits) * logits_mask
  log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  return np.mean(-(tau / base_temperature) * mean_log_prob_pos)


@pytest.mark.quick
def test_supcon_base_temperature_loss_and_gradient():
  config = cifar10_supcon.get_config()
  assert config.loss.base_temperature == 0.07
  assert not config.loss.official_scale
  z = np.random.default_rng(3).normal(size=(4, 2, 4))
  labels = np.array([0, 1, 0, 1], np.int32)
  tau = config.loss.temperature
  fn = losses.for_config(config.loss)
  loss, grad = jax.value_and_grad(
      lambda x: fn(x, jnp.asarray(labels), None)[0])(jnp.asarray(z,
                                                                 jnp.float32))
  np.testing.assert_allclose(loss, np_supcontrast(z, labels, tau, 0.07),
                             rtol=1e-5)
  # Central differences of the float64 reference, every coordinate.
  eps, fd = 1e-6, np.zeros_like(z)
  for idx in np.ndindex(*z.shape):
    step = np.zeros_like(z)
    step[idx] = eps
    fd[idx] = (np_supcontrast(z + step, labels, tau, 0.07) -
               np_supcontrast(z - step, labels, tau, 0.07)) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=2e-4, atol=1e-5)
  # Exactly loss x T / base_T of the unscaled loss, value and gradient.
  plain = ml_collections.ConfigDict(config.loss.to_dict())
  plain.base_temperature = 0.0
  fn0 = losses.for_config(plain)
  loss0, grad0 = jax.value_and_grad(
      lambda x: fn0(x, jnp.asarray(labels), None)[0])(jnp.asarray(z,
                                                                  jnp.float32))
  np.testing.assert_allclose(loss, loss0 * tau / 0.07, rtol=1e-6)
  np.testing.assert_allclose(grad, grad0 * tau / 0.07, rtol=1e-5, atol=1e-7)


@pytest.mark.quick
def test_base_temperature_only_for_supcon():
  config = cifar10.get_config()
  config.loss.base_temperature = 0.07
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.loss\.base_temperature=0\.07 is invalid"):
    config_lib.validate(config)


# ---------------------------------------------------------------------------
# One optimizer step under the official CIFAR-10 config.
# ---------------------------------------------------------------------------

EETA = 0.001  # tf2/lars_optimizer.py EETA_DEFAULT


def _tiny_official_config(official=True):
  config = cifar10.get_config()
  config.data.image_size = 16
  config.model.stage_sizes = (1, 1, 1, 1)
  config.model.base_widths = (4, 4, 8, 8)
  config.model.proj_dim = 8
  config.train.global_batch = 8
  config.train.steps = 5
  config.optim.warmup_epochs = 0
  config.optim.base_lr = 4.0
  config.optim.weight_decay = 1e-2  # large enough for a missing decay to show
  config.loss.official_scale = official
  config.optim.decay_sup_head = official
  return config


def _official_objective(model, batch, tau, wd):
  """tf2/run.py's per-step loss: contrast + supervised + head L2, as in JAX."""
  images, labels = jnp.asarray(batch["images"]), jnp.asarray(batch["labels"])
  n = images.shape[0]
  # tf2/model.py splits the channel-stacked views and concatenates them on
  # the batch axis: the first views, then the second views.
  x = jnp.concatenate([images[:, 0], images[:, 1]])

  def objective(params, stats):
    out, _ = model.apply({"params": params, "batch_stats": stats}, x,
                         train=True, mutable=["batch_stats"])
    h = out["z"] / jnp.linalg.norm(out["z"], axis=-1, keepdims=True)
    h1, h2 = h[:n], h[n:]
    masks = jnp.eye(n)
    onehot = jnp.eye(n, 2 * n)  # labels = one_hot(range(n), 2n)
    logits_aa = h1 @ h1.T / tau - masks * LARGE_NUM
    logits_bb = h2 @ h2.T / tau - masks * LARGE_NUM
    ce = lambda logits: -jnp.sum(onehot * jax.nn.log_softmax(logits), 1)
    con = jnp.mean(ce(jnp.concatenate([h1 @ h2.T / tau, logits_aa], 1)) +
                   ce(jnp.concatenate([h2 @ h1.T / tau, logits_bb], 1)))
    sup_labels = jnp.concatenate([labels, labels])
    sup = -jnp.mean(jnp.take_along_axis(
        jax.nn.log_softmax(out["logits"]), sup_labels[:, None], 1))
    # add_weight_decay under LARS: only head_supervised kernels, l2_loss.
    l2 = wd * jnp.sum(params["sup_head"]["dense"]["kernel"] ** 2) / 2
    return con + sup + l2

  return objective


def _np_lars(params, grads, velocity, lr, wd, momentum):
  """LARSOptimizer._resource_apply_dense, classic momentum, float64.

  Official names map to ours: 'batch_normalization' = BatchNorm `scale` and
  `bias` leaves, 'bias' = every bias, 'head_supervised' = `sup_head`; these
  are excluded from weight decay and from layer adaptation.
  """
  new_params, new_velocity = {}, {}
  for path, param in params.items():
    excluded = path[-1] != "kernel" or "sup_head" in path
    grad = grads[path]
    if not excluded:
      grad = grad + wd * param
    trust_ratio = 1.0
    if not excluded:
      w_norm, g_norm = np.linalg.norm(param), np.linalg.norm(grad)
      if w_norm > 0 and g_norm > 0:
        trust_ratio = EETA * w_norm / g_norm
    next_v = momentum * velocity[path] + lr * trust_ratio * grad
    new_params[path], new_velocity[path] = param - next_v, next_v
  return new_params, new_velocity


def _flat(tree):
  return {tuple(str(getattr(k, "key", k)) for k in path): np.asarray(
      leaf, np.float64)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _unflat(flat, like):
  leaves = [flat[tuple(str(getattr(k, "key", k)) for k in path)]
            for path, _ in jax.tree_util.tree_leaves_with_path(like)]
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def _run_steps(config, batch, steps):
  """The library's own train step (from the config), `steps` times."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  sched = config_lib.derive_schedule(config, 1000)
  model, _, _, state, step_fn = pretrain.build_pretrain(config, 10, sched,
                                                        mesh)
  params0 = jax.device_get(state.params)
  for _ in range(steps):
    state, _ = step_fn(state, parallel.host_to_global(mesh, batch))
  return model, params0, jax.device_get(state.params)


def test_official_config_step_is_official_lars():
  config = _tiny_official_config()
  config_lib.validate(config)
  rng = np.random.default_rng(0)
  batch = {"images": rng.uniform(size=(8, 2, 16, 16, 3)).astype(np.float32),
           "labels": rng.integers(0, 10, size=8).astype(np.int32)}
  model, params0, got = _run_steps(config, batch, steps=2)
  # The reference model has no mapped axis: one device, same parameters.
  ref_model = build_model(model_config(config), num_classes=10)
  stats = state_lib.init_variables(ref_model, 16, config.seed)["batch_stats"]
  wd, momentum = config.optim.weight_decay, config.optim.momentum
  objective = _official_objective(ref_model, batch, config.loss.temperature,
                                  wd)
  peak = config.optim.base_lr * 8 / 256  # learning_rate_scaling 'linear'
  params = _flat(params0)
  velocity = {k: np.zeros_like(v) for k, v in params.items()}
  for step in range(2):
    # WarmUpAndCosineDecay with no warm-up: cosine decay over train_steps.
    lr = peak * 0.5 * (1 + np.cos(np.pi * step / config.train.steps))
    grads = _flat(jax.grad(objective)(
        _unflat({k: v.astype(np.float32) for k, v in params.items()},
                params0), stats))
    params, velocity = _np_lars(params, grads, velocity, lr, wd, momentum)
  start, got = _flat(params0), _flat(got)
  for path, want in params.items():
    delta, want_delta = got[path] - start[path], want - start[path]
    assert np.abs(want_delta).max() > 0, path
    np.testing.assert_allclose(delta, want_delta, rtol=2e-4,
                               atol=2e-4 * np.abs(want_delta).max(),
                               err_msg=str(path))


def test_paper_scale_step_differs_from_official():
  """Without the switch BatchNorm moves half as far: the switch matters."""
  rng = np.random.default_rng(1)
  batch = {"images": rng.uniform(size=(8, 2, 16, 16, 3)).astype(np.float32),
           "labels": rng.integers(0, 10, size=8).astype(np.int32)}
  _, start, official = _run_steps(_tiny_official_config(True), batch, 1)
  _, _, paper = _run_steps(_tiny_official_config(False), batch, 1)
  start, official, paper = _flat(start), _flat(official), _flat(paper)
  bn = [p for p in start if p[-1] == "scale" and "head" in p]
  assert bn
  for path in bn:
    np.testing.assert_allclose(official[path] - start[path],
                               2 * (paper[path] - start[path]), rtol=1e-4,
                               atol=1e-9)
