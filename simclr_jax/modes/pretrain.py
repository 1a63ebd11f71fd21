"""The `pretrain` mode: SimCLR / SupCon pretraining with its per-replica step.

The step is written for one replica with named-axis collectives (global
BatchNorm, the loss's all_gather, pmean of gradients and metrics) and mapped
over the one-axis mesh by `engine.state.make_step`. The online linear probe
(a head on stop_gradient(h)), the kNN monitor, the fast probe, the held-out
signals and the pictures are evaluators of the one loop
(`eval.evaluators`).
"""

import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simclr_jax import config as config_lib
from simclr_jax.engine import gradcache
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.data import augment_jax
from simclr_jax.engine import loop
from simclr_jax.engine import resolve
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import features as features_lib
from simclr_jax.evals import registry as evals_registry
from simclr_jax.models import build_model
from simclr_jax.models import model_config

AXIS = parallel.AXIS
TrainState = state_lib.TrainState


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
    grad_chunks: > 1 turns on gradient caching (`simclr_jax.engine.gradcache`): the
      images are processed in this many chunks, the loss still sees the whole
      batch; BatchNorm statistics are then per chunk.

  Returns:
    (grads, new_batch_stats, metrics): gradients and metrics pmean'd over
    `AXIS`; the statistics are already global through BatchNorm's axis_name.
    `loss` is the contrastive loss; with the probe, `probe_loss` is the
    probe's and `total_loss` the differentiated sum.
  """
  images, labels = batch["images"], batch["labels"]
  n, views = images.shape[:2]
  gradcache.check_chunks(n, grad_chunks)
  # All views of all local images in one batch: BatchNorm statistics are then
  # global over every view on every device, as in the official code.
  x = images.reshape((n * views,) + images.shape[2:])
  loss_fn_of_z = losses.for_config(loss_cfg)

  def forward(params, x):
    out, updates = model.apply({"params": params, "batch_stats": batch_stats},
                               x, train=True, mutable=["batch_stats"])
    outputs = {"z": out["z"]}
    if probe:
      outputs["logits"] = out["logits"]
    return outputs, updates["batch_stats"]

  def loss_of_outputs(outputs):
    z = outputs["z"].reshape(n, views, -1)
    loss, metrics = loss_fn_of_z(z, labels, AXIS)
    metrics = dict(metrics, loss=loss)
    if probe:
      view_labels = jnp.repeat(labels, views)
      probe_loss = losses.cross_entropy(outputs["logits"], view_labels)
      metrics["probe_loss"] = probe_loss
      metrics["probe_acc"] = losses.accuracy(outputs["logits"],
                                                view_labels)
      loss = loss + probe_loss
      metrics["total_loss"] = loss
    return loss, metrics

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
      device (`simclr_jax.data.augment_jax`); None when the host did it all.
    aug_seed: seed of the on-device augmentation.

  Returns:
    The new state and pmean'd scalar metrics.
  """
  if device_aug is not None:
    batch = augment_on_device(batch, state.step, device_aug, aug_seed)
  grads, batch_stats, metrics = pretrain_grads(
      state.params, state.batch_stats, batch, model=model, loss_cfg=loss_cfg,
      probe=probe, grad_chunks=grad_chunks)
  metrics = dict(metrics, learning_rate=schedule(state.step))
  return state.apply_gradients(grads, tx, batch_stats), metrics


def make_pretrain_step(model, tx, loss_cfg, probe: bool,
                       schedule: optax.Schedule, mesh, *, grad_chunks: int = 1,
                       device_aug: Optional[Any] = None, aug_seed: int = 0):
  """Returns jit(shard_map(pretrain_replica_step)) with the state donated.

  Keyword arguments are those of `pretrain_replica_step` (gradient caching and
  on-device augmentation; off by default).
  """
  fn = functools.partial(pretrain_replica_step, model=model, tx=tx,
                         loss_cfg=loss_cfg, probe=probe, schedule=schedule,
                         grad_chunks=grad_chunks, device_aug=device_aug,
                         aug_seed=aug_seed)
  return state_lib.make_step(fn, mesh)


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
  schedule, tx = optim.schedule_and_optimizer(config.optim, schedule_info)
  state = state_lib.create_train_state(model, tx, config.data.image_size,
                                       config.seed, mesh)
  step_fn = make_pretrain_step(
      model, tx, config.loss, config.train.probe, schedule, mesh,
      grad_chunks=config.train.get("grad_chunks", 1),
      device_aug=config.aug if config.aug.get("on_device", False) else None,
      aug_seed=config.seed)
  return model, tx, schedule, state, step_fn


class Pretrain(loop.Mode):
  """SimCLR / SupCon pretraining of the configured model from scratch."""

  name = "pretrain"
  needs_labels = False  # unlabelled data gets the held-out signals
  needs_eval_split = False  # no eval split: no evaluation
  evaluators = ("classifier", "knn", "fast_probe", "signals", "pictures")
  # The online probe, the kNN monitor and the pictures at every evaluation.
  default_evaluators = ("classifier", "knn", "pictures")

  def rules(self):
    """The input path, the evaluations the data supports, the sizes a
    small dataset can fill (`data.fit_sizes`)."""
    return (_input_path, _evaluations_the_data_supports, resolve.fit_batch,
            _fit_evaluation_sizes)

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """The pictures read image files."""
    if ("pictures" in evals_registry.names(config) and
        config.data.source == "synthetic"):
      config_lib.fail("eval.evaluators", evals_registry.names(config),
                      "the pictures need a file or TFDS source; leave "
                      "'pictures' out with data.source='synthetic'")

  def check_data(self, config: ml_collections.ConfigDict,
                 facts: resolve.DataFacts) -> None:
    """The batch, kNN memory, held-out pairs and pictures against the data."""
    resolve.check_batch(config, facts.num_train)
    num_eval, split = facts.num_eval, config.data.eval_split
    names = evals_registry.names(config)
    if "knn" in names:
      resolve.check_knn(config, resolve.labelled_examples(config, facts))
    if "signals" in names and num_eval is not None and num_eval < 2:
      config_lib.fail(
          "eval.evaluators", names, f"the eval split {split!r} holds "
          f"{num_eval} image; the held-out signals compare pairs of "
          "different images (hold out more, or leave 'signals' out)")
    if not ("pictures" in names and num_eval):
      return
    points = min(int(config.viz.tsne_points), num_eval)
    if not 0 < float(config.viz.tsne_perplexity) < points:
      config_lib.fail(
          "viz.tsne_perplexity", config.viz.tsne_perplexity,
          f"must be in (0, {points}), the points of the embedding map "
          f"(viz.tsne_points={config.viz.tsne_points}, {num_eval} examples "
          f"in {split!r})")
    for field in ("heatmap_batch", "preview_images"):
      if int(config.viz[field]) > facts.num_train:
        config_lib.fail(f"viz.{field}", config.viz[field], "must be <= the "
                        f"{facts.num_train} training examples")

  def build(self, config: ml_collections.ConfigDict, mesh,
            workdir: str) -> loop.Job:
    """The pretraining job; see `engine.loop.Job`."""
    from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    info = data_lib.dataset_info(config.data)
    sched = config_lib.derive_schedule(
        config, info.num_examples[config.data.train_split])
    model, _, _, state, step_fn = build_pretrain(config, info.num_classes,
                                                 sched, mesh)
    return loop.Job(
        state=state, step_fn=step_fn,
        batches=lambda start: data_lib.make_pretrain_iterator(
            config.data, config.aug, config.train.global_batch, config.seed,
            start_step=start),
        total_steps=sched.total_steps,
        images_per_step=config.train.global_batch,
        evaluators=evals_registry.build(evals_registry.Context(
            config, mesh, workdir, info.num_classes, model=model,
            classifier_key="probe",
            feature_fn=features_lib.encoder_feature_fn(model))),
        description=f"Pretraining ({sched.steps_per_epoch} steps per epoch, "
        f"peak lr {sched.peak_lr:.4g})")


# The evaluators that need labels.
_NEED_LABELS = ("classifier", "knn", "fast_probe")


def _input_path(config: ml_collections.ConfigDict,
                facts: resolve.DataFacts) -> resolve.Changes:
  """On-device augmentation where the backend and the config ask for it."""
  return {"aug.on_device": augment_jax.choose_input_path(config,
                                                         facts.backend)}


def _evaluations_the_data_supports(config: ml_collections.ConfigDict,
                                   facts: resolve.DataFacts
                                   ) -> resolve.Changes:
  """What the data cannot support, left out.

  Without an eval split nothing is evaluated. Unlabelled data (an image
  folder without class sub-folders) cannot train or score the online probe,
  kNN monitor or fast probe: the held-out signals run instead. Without
  `train.probe` there is no online probe to score.
  """
  if not facts.has_eval:
    return dict(resolve.turn_off(config, ["train.probe"]),
                **{"eval.evaluators": ()})
  if not facts.labelled:
    kept = [n for n in evals_registry.names(config) if n not in _NEED_LABELS]
    names = tuple(n for n in evals_registry.NAMES
                  if n in kept or n == "signals")
    return dict(resolve.turn_off(config, ["train.probe"]),
                **{"eval.evaluators": names})
  if not config.train.probe:
    return evals_registry.without(config, ["classifier"])
  return {}


def _fit_evaluation_sizes(config: ml_collections.ConfigDict,
                          facts: resolve.DataFacts) -> resolve.Changes:
  """With `data.fit_sizes`: kNN's k, the picture batches and the t-SNE
  perplexity lowered to what the split sizes allow."""
  if not resolve.fits(config):
    return {}
  changes = {}
  names = evals_registry.names(config)
  if "knn" in names:
    changes.update(resolve.lower(config, "eval.knn_k",
                                 max(1, facts.num_train)))
  if "pictures" not in names:
    return changes  # no pictures: nothing else to fit
  changes.update(resolve.lower(config, "viz.heatmap_batch",
                               resolve.fitted_train(facts)))
  changes.update(resolve.lower(config, "viz.preview_images", facts.num_train))
  if facts.num_eval:
    points = min(int(config.viz.tsne_points), facts.num_eval)
    # sklearn's t-SNE needs perplexity < points; a third keeps it stable.
    changes.update(resolve.lower(config, "viz.tsne_perplexity",
                                 max(0.5, (points - 1) / 3)))
  return changes


MODE = Pretrain()

run = MODE.run  # run(config, workdir, guard=None): the mode in the loop
