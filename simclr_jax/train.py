"""Train state, the per-replica pretraining step, and the pretraining loop.

The step is written for one replica with named-axis collectives (global
BatchNorm, the loss's all_gather, pmean of gradients and metrics) and mapped
over the one-axis mesh with `shard_map` inside `jit`: pmap's semantics with
global `jax.Array`s, so orbax saves the state on every host without any
replicate/unreplicate step.
"""

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from simclr_jax import augment_jax
from simclr_jax import config as config_lib
from simclr_jax import gradcache
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.models import build_model

AXIS = parallel.AXIS
# Keys of config.model that describe the architecture (what an export stores).
MODEL_KEYS = ("depth", "width", "sk_ratio", "stem", "bn_momentum", "bn_epsilon",
              "head_layers", "head_hidden_dim", "proj_dim", "sup_head_from",
              "dtype")


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a pytree of global arrays (replicated)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> Dict[str, Any]:
    """The Flax variables {'params', 'batch_stats'}."""
    return {"params": self.params, "batch_stats": self.batch_stats}


def model_config(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The architecture part of `config.model` as a plain dict, stem resolved."""
  cfg = {k: config.model[k] for k in MODEL_KEYS}
  for key in ("stage_sizes", "base_widths"):  # optional overrides
    if config.model.get(key) is not None:
      cfg[key] = tuple(config.model[key])
  cfg["stem"] = config_lib.resolve_stem(config)
  return cfg


def init_variables(model, image_size: int, seed: int) -> Dict[str, Any]:
  """Initialises model variables on the host (outside any mapped axis)."""
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(seed), dummy)
  return jax.device_get(variables)


def create_train_state(model, tx: optax.GradientTransformation,
                       image_size: int, seed: int, mesh) -> TrainState:
  """Initialises parameters (same on every process) and optimizer state, replicated.

  Args:
    model: the Flax model.
    tx: the optimizer.
    image_size: input side for shape inference.
    seed: parameter-init seed; identical on all processes so the replicas agree.
    mesh: the device mesh.

  Returns:
    A replicated `TrainState` at step 0.
  """
  variables = init_variables(model, image_size, seed)
  state = TrainState(step=np.zeros((), np.int32), params=variables["params"],
                     batch_stats=variables.get("batch_stats", {}),
                     opt_state=tx.init(variables["params"]))
  return parallel.replicate(mesh, jax.device_get(state))


def contrastive_loss(loss_cfg: ml_collections.ConfigDict, z: jax.Array,
                     labels: jax.Array, axis_name: Optional[str]
                     ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Dispatches to the configured loss over local projections z [n, V, d]."""
  name = loss_cfg.name
  if name == "nt_xent":
    return losses.nt_xent(z, loss_cfg.temperature, axis_name=axis_name)
  if name == "supcon":
    return losses.supcon(z, labels, loss_cfg.temperature, axis_name=axis_name,
                         variant=loss_cfg.supcon_variant)
  if name == "nt_logistic":
    return losses.nt_logistic(z, loss_cfg.temperature, axis_name=axis_name)
  if name == "margin_triplet":
    return losses.margin_triplet(z, loss_cfg.margin, axis_name=axis_name)
  raise ValueError(f"config.loss.name={name!r} is not one of {losses.LOSSES}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels, in float32."""
  logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def pretrain_grads(params: Any, batch_stats: Any, batch: Dict[str, jax.Array],
                   *, model, loss_cfg, probe: bool, grad_chunks: int = 1
                   ) -> Tuple[Any, Any, Dict[str, jax.Array]]:
  """Gradients of the global-batch loss on one replica (called under `per_replica`).

  Args:
    params: replicated parameters.
    batch_stats: replicated BatchNorm statistics.
    batch: this replica's {'images': [n, V, H, W, 3], 'labels': [n]}.
    model: the SimCLR model (BatchNorm bound to `AXIS`).
    loss_cfg: `config.loss`.
    probe: train the online linear probe on stop_gradient(h) as well.
    grad_chunks: > 1 turns on gradient caching (`simclr_jax.gradcache`): the
      images are processed in this many chunks, the loss still sees the whole
      batch; BatchNorm statistics are then per chunk.

  Returns:
    (grads, new_batch_stats, metrics): gradients and metrics pmean'd over
    `AXIS`; the statistics are already global through BatchNorm's axis_name.
  """
  images, labels = batch["images"], batch["labels"]
  n, views = images.shape[:2]
  gradcache.check_chunks(n, grad_chunks)
  # All views of all local images in one batch: BatchNorm statistics are then
  # global over every view on every device, as in the official code.
  x = images.reshape((n * views,) + images.shape[2:])

  def forward(params, x):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats},
                               x, train=True, mutable=["batch_stats"])
    outputs = {"z": out["z"]}
    if probe:
      outputs["logits"] = out["logits"]
    return outputs, updates["batch_stats"]

  def loss_of_outputs(outputs):
    z = outputs["z"].reshape(n, views, -1)
    loss, metrics = contrastive_loss(loss_cfg, z, labels, AXIS)
    metrics = dict(metrics, contrastive_loss=loss)
    if probe:
      view_labels = jnp.repeat(labels, views)
      probe_loss = cross_entropy(outputs["logits"], view_labels)
      metrics["probe_loss"] = probe_loss
      metrics["probe_acc"] = jnp.mean(
          jnp.argmax(outputs["logits"], -1) == view_labels)
      loss = loss + probe_loss
    return loss, dict(metrics, loss=loss)

  if grad_chunks > 1:
    # Chunks of whole images (all their views), in the order of x.
    (_, metrics), grads, stats = gradcache.cached_value_and_grad(
        forward, loss_of_outputs, params, x, grad_chunks)
    new_stats = gradcache.mean_over_chunks(stats)
  else:
    def loss_fn(params):
      outputs, stats = forward(params, x)
      loss, metrics = loss_of_outputs(outputs)
      return loss, (stats, metrics)

    (_, (new_stats, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
  # Per-replica gradients are those of sum_d loss_d (pmap semantics): their
  # mean over replicas is the gradient of the global-batch loss.
  grads = jax.lax.pmean(grads, AXIS)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads))
  return grads, new_stats, jax.lax.pmean(metrics, AXIS)


def augment_on_device(batch: Dict[str, jax.Array], step: jax.Array,
                      aug_cfg: Any, seed: int) -> Dict[str, jax.Array]:
  """Flip/colour/grayscale/blur of this replica's cropped views, in JAX.

  Called under `per_replica`. A fresh key per (step, device) keeps the
  augmentation resumable without any host state.

  Args:
    batch: {'images': [n, V, H, W, 3] resized crops, ...}.
    step: the train step (the state's, before the update).
    aug_cfg: `config.aug`.
    seed: augmentation seed.

  Returns:
    The batch with augmented images in [0, 1].
  """
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step),
                           jax.lax.axis_index(AXIS))
  return dict(batch, images=augment_jax.augment_batch(key, batch["images"],
                                                      aug_cfg))


def pretrain_replica_step(state: TrainState, batch: Dict[str, jax.Array], *,
                          model, tx, loss_cfg, probe: bool,
                          schedule: optax.Schedule, grad_chunks: int = 1,
                          device_aug: Optional[Any] = None, aug_seed: int = 0
                          ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimizer step on one replica (called under `per_replica`).

  Args:
    state: the replicated train state.
    batch: this replica's {'images': [n, V, H, W, 3], 'labels': [n]}.
    model: the SimCLR model (BatchNorm bound to `AXIS`).
    tx: the optimizer.
    loss_cfg: `config.loss`.
    probe: train the online linear probe as well.
    schedule: learning-rate schedule (for logging).
    grad_chunks: gradient-caching chunks per device (1 = off).
    device_aug: `config.aug` to augment the (cropped) views here, on the
      device (`simclr_jax.augment_jax`); None when the host did it all.
    aug_seed: seed of the on-device augmentation.

  Returns:
    The new state and pmean'd scalar metrics.
  """
  if device_aug is not None:
    batch = augment_on_device(batch, state.step, device_aug, aug_seed)
  grads, batch_stats, metrics = pretrain_grads(
      state.params, state.batch_stats, batch, model=model, loss_cfg=loss_cfg,
      probe=probe, grad_chunks=grad_chunks)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def make_pretrain_step(model, tx, loss_cfg, probe: bool,
                       schedule: optax.Schedule, mesh, *, grad_chunks: int = 1,
                       device_aug: Optional[Any] = None,
                       aug_seed: int = 0) -> Callable:
  """Returns jit(shard_map(pretrain_replica_step)) with the state donated.

  Keyword arguments are those of `pretrain_replica_step` (gradient caching and
  on-device augmentation; off by default).
  """
  fn = functools.partial(pretrain_replica_step, model=model, tx=tx,
                         loss_cfg=loss_cfg, probe=probe, schedule=schedule,
                         grad_chunks=grad_chunks, device_aug=device_aug,
                         aug_seed=aug_seed)
  mapped = parallel.per_replica(fn, mesh, in_specs=(P(), P(AXIS)),
                                out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


def build_pretrain(config: ml_collections.ConfigDict, num_classes: int,
                   schedule_info: config_lib.Schedule, mesh):
  """Builds model, optimizer, schedule, initial state and step for pretraining.

  Returns:
    (model, tx, schedule, state, step_fn).
  """
  # Before any compile: chunks must divide the per-device batch.
  gradcache.check_chunks(config.train.global_batch // mesh.size,
                         config.train.get("grad_chunks", 1))
  model = build_model(model_config(config),
                      num_classes=num_classes if config.train.probe else 0,
                      axis_name=AXIS, sup_stop_gradient=True)
  schedule = optim.make_schedule(schedule_info.peak_lr,
                                 schedule_info.total_steps,
                                 schedule_info.warmup_steps)
  tx = optim.make_optimizer(config.optim, schedule)
  state = create_train_state(model, tx, config.data.image_size, config.seed,
                             mesh)
  step_fn = make_pretrain_step(
      model, tx, config.loss, config.train.probe, schedule, mesh,
      grad_chunks=config.train.get("grad_chunks", 1),
      device_aug=config.aug if config.aug.get("on_device", False) else None,
      aug_seed=config.seed)
  return model, tx, schedule, state, step_fn


def mean_metrics(pending) -> Dict[str, float]:
  """Fetches a list of per-step metric dicts (one host sync) and averages them."""
  fetched = jax.device_get(pending)
  keys = fetched[0].keys()
  return {k: float(np.mean([m[k] for m in fetched])) for k in keys}
