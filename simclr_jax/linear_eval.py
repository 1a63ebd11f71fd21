"""Linear evaluation (the SimCLR protocol) and the `linear_eval` mode.

The encoder is frozen: its variables are an input of the step and never an
output, it runs in inference mode (BatchNorm moving averages, no update), and
only a zero-initialised linear head on h is trained, with random crop + flip,
SGD with Nesterov momentum and lr = base_lr x batch / 256. The mode also runs
the fast probe and the kNN classifier on the same encoder (`eval.protocols`)
and writes everything to `<workdir>/linear_eval_results.json`.
"""

import functools
import time
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import evaluate
from simclr_jax import export
from simclr_jax import fast_probe
from simclr_jax import features as features_lib
from simclr_jax import knn
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train
from simclr_jax.models import build_model
from simclr_jax.models import representation_dim

AXIS = parallel.AXIS


@flax.struct.dataclass
class HeadState:
  """What a linear-eval step updates: the head and its optimizer, nothing else."""
  step: jax.Array
  head: Any
  opt_state: Any


def _apply_head(module, h):
  return module.sup_head(h)


def _head_mask(params):
  # The head's kernel gets the weight decay (1e-6 on ImageNet), not its bias.
  return optim.decay_mask(params, exclude=())


def replica_step(state: HeadState, frozen: Any, batch: Dict[str, jax.Array],
                 *, model, tx) -> Tuple[HeadState, Dict[str, jax.Array]]:
  """One SGD step of the linear head on one replica (under `per_replica`).

  Args:
    state: the replicated head state.
    frozen: the encoder's {'params', 'batch_stats'} (read only).
    batch: this replica's {'images': [n, H, W, 3], 'labels': [n]}.
    model: the SimCLR model (its `encode` and `sup_head`).
    tx: the head's optimizer.

  Returns:
    The new head state and pmean'd metrics.
  """
  h = jax.lax.stop_gradient(
      model.apply(frozen, batch["images"], False, method=model.encode))

  def loss_fn(head):
    logits = model.apply({"params": {"sup_head": head}}, h,
                         method=_apply_head)
    loss = train.cross_entropy(logits, batch["labels"])
    return loss, jnp.mean(jnp.argmax(logits, -1) == batch["labels"])

  (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.head)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.head)
  head = optax.apply_updates(state.head, updates)
  metrics = jax.lax.pmean({"loss": loss, "train_acc": acc}, AXIS)
  return HeadState(state.step + 1, head, opt_state), metrics


def full_variables(frozen: Dict[str, Any], head: Any) -> Dict[str, Any]:
  """The frozen variables with the linear head added under 'sup_head'."""
  return {"params": dict(frozen["params"], sup_head=head),
          "batch_stats": frozen["batch_stats"]}


def train_linear(config: ml_collections.ConfigDict, variables: Dict[str, Any],
                 model_cfg: Dict[str, Any], num_classes: int, mesh,
                 workdir: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Trains the linear head on the frozen encoder and scores the eval split.

  Resumes from `<workdir>/checkpoints` (which hold the head state only).

  Args:
    config: the full configuration (optim, train, aug, eval).
    variables: the encoder's host variables {'params', 'batch_stats'}.
    model_cfg: its architecture.
    num_classes: classes of the dataset.
    mesh: the device mesh.
    workdir: directory for the head checkpoints.

  Returns:
    (final_variables, results): the frozen variables plus the trained head,
    and {'top1', 'top5', 'num_examples', 'steps', 'num_train'}.
  """
  model = build_model(dict(model_cfg, sup_head_from=0), num_classes,
                      axis_name=AXIS)
  labels = data_lib.load_labels(config.data, config.data.train_split)
  indices = features_lib.labelled_indices(config, labels)
  sched = config_lib.derive_schedule(config, len(indices))
  schedule = optim.make_schedule(sched.peak_lr, sched.total_steps,
                                 sched.warmup_steps)
  tx = optim.make_optimizer(config.optim, schedule, mask=_head_mask)
  dim = representation_dim(model_cfg)
  # Zero-initialised head (the official linear-eval initialisation).
  head = {"dense": {"kernel": np.zeros((dim, num_classes), np.float32),
                    "bias": np.zeros((num_classes,), np.float32)}}
  state = parallel.replicate(mesh, HeadState(np.zeros((), np.int32), head,
                                             tx.init(head)))
  frozen = parallel.replicate(mesh, {"params": variables["params"],
                                     "batch_stats": variables["batch_stats"]})
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  if start:
    logging.info("Resuming linear eval from step %d", start)
    state = checkpointer.restore(start, state)
  step_fn = jax.jit(parallel.per_replica(
      functools.partial(replica_step, model=model, tx=tx), mesh,
      in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P())),
      donate_argnums=(0,))
  batches = data_lib.make_supervised_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      start_step=start, indices=indices)
  total = sched.total_steps
  logging.info("Linear eval: %d steps on %d labelled examples, lr %.4g",
               total, len(indices), sched.peak_lr)
  pending, t0 = [], time.time()
  for step in range(start + 1, total + 1):
    state, metrics = step_fn(state, frozen,
                             parallel.host_to_global(mesh, next(batches)))
    pending.append(metrics)
    if config_lib.is_time(step, config.train.log_every_steps, total):
      scalars = train.mean_metrics(pending)
      pending = []
      logging.info("linear eval step %d/%d: %s (%.1f s)", step, total,
                   scalars, time.time() - t0)
    if config_lib.is_time(step, config.train.checkpoint_every_steps, total):
      checkpointer.save(step, state)
  checkpointer.close()
  final = full_variables(frozen, state.head)
  eval_step = evaluate.make_classifier_eval_step(
      evaluate.probe_logits_fn(model), mesh)
  results = evaluate.run_classifier_eval(
      eval_step, final, data_lib.make_eval_iterator(
          config.data, config.aug, config.data.eval_split,
          config.eval.batch_size), mesh)
  results.update(steps=int(total), num_train=int(len(indices)))
  return parallel.to_host(final), results


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """The `linear_eval` mode: the protocols of `eval.protocols` on one encoder.

  Args:
    config: a configuration whose `init` names the encoder (or with
      `eval.raw_pixels` for the pixel baseline).
    workdir: directory for results and head checkpoints.

  Returns:
    The results dict also written to `<workdir>/linear_eval_results.json`:
    one entry per protocol ('linear', 'linear_probe' for the fast probe,
    'knn'), plus 'source', 'label_fraction' and 'config'.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  info = data_lib.dataset_info(config.data)
  protocols = tuple(config.eval.protocols)
  results = {"config": config.to_dict(),
             "label_fraction": float(config.eval.label_fraction)}
  if config.eval.raw_pixels:
    feature_fn, variables = features_lib.pixel_feature_fn, {}
    results["source"] = {"kind": "raw_pixels", "step": 0}
  else:
    host_vars, model_cfg, results["source"] = export.load_encoder(config)
    model = build_model(model_cfg, num_classes=0)
    feature_fn = features_lib.encoder_feature_fn(model)
    variables = parallel.replicate(mesh, host_vars)
  results["step"] = results["source"].get("step")
  if "fast_probe" in protocols or "knn" in protocols:
    arrays = features_lib.split_arrays(config, feature_fn, variables, mesh)
    if "fast_probe" in protocols:
      results["linear_probe"] = fast_probe.fast_probe(config, arrays,
                                                      info.num_classes)
    if "knn" in protocols:
      results["knn"] = knn.knn_eval(config, arrays, info.num_classes, mesh)
    _log(config, results)
  if "linear" in protocols:
    _, results["linear"] = train_linear(config, host_vars, model_cfg,
                                        info.num_classes, mesh, workdir)
    _log(config, {"linear": results["linear"]})
  evaluate.write_results(workdir, "linear_eval_results", results)
  return results


def _log(config, results: Dict[str, Any]) -> None:
  for key in ("linear_probe", "knn", "linear"):
    if key in results:
      logging.info("%s on %s: top-1 %.4f over %d examples", key,
                   config.data.eval_split, results[key]["top1"],
                   results[key]["num_examples"])
