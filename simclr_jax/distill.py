"""Distillation (SimCLR v2, step 3): a frozen teacher trains a student.

The teacher is an export (`checkpoint.save_export`) with a classifier head; the
student is the configured model (the same or a smaller ResNet), randomly
initialised. Both see the same crop+flip view of each unlabelled training
image, and the student minimises the cross-entropy between the teacher's and
its own temperature-softened class distributions (SimCLR v2, eq. 2):

  L_distill = -mean_i sum_y P_T(y | x_i; tau) log P_S(y | x_i; tau),

optionally plus `label_weight` times the usual cross-entropy with the labels.
Checkpoints and resume work as in pretraining; the student is evaluated
exactly (every example of the eval split once) and exported at the end.

A pretraining run whose online linear probe serves as the teacher is exported
with its probe head by
  python -m simclr_jax.export --workdir=runs/digits_supcon \
      --out=runs/digits_supcon_teacher
"""

import functools
import os
import time
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import evaluate
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import pretrain
from simclr_jax import train
from simclr_jax.models import build_model

AXIS = parallel.AXIS


def distill_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                 temperature: float) -> jax.Array:
  """Mean cross-entropy between softened teacher and student distributions.

  Args:
    student_logits: [b, C] student class scores.
    teacher_logits: [b, C] teacher class scores (no gradient flows into them).
    temperature: tau, dividing both sets of logits.

  Returns:
    -mean_i sum_y softmax(t_i / tau)_y log_softmax(s_i / tau)_y, float32.
  """
  teacher = jax.nn.softmax(
      jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  log_student = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / temperature)
  return -jnp.mean(jnp.sum(teacher * log_student, axis=-1))


def load_teacher(config: ml_collections.ConfigDict
                 ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """Loads and checks the teacher export `config.distill.teacher_export`.

  Args:
    config: the full configuration (mode 'distill').

  Returns:
    (teacher_model, variables, meta): the inference-mode model, its host
    variables and the export's meta.json.

  Raises:
    ValueError: if the path is not an export, has no classifier head, was
      trained at another image size, or its variables do not fit its model.
  """
  path = config.distill.teacher_export
  if not os.path.isdir(path):
    raise ValueError(f"config.distill.teacher_export={path!r} is invalid: "
                     "no such directory (an export with meta.json is required)")
  variables, meta = ckpt_lib.load_export(path)
  num_classes = int(meta["num_classes"])
  if num_classes < 1:
    raise ValueError(f"config.distill.teacher_export={path!r} is invalid: the "
                     "export has no classifier head (num_classes=0); export a "
                     "fine-tuned or probe-trained model")
  if int(meta["image_size"]) != config.data.image_size:
    raise ValueError(f"config.data.image_size={config.data.image_size!r} is "
                     f"invalid: the teacher {path!r} was trained at "
                     f"{meta['image_size']} px; use the same size")
  # Inference mode only: BatchNorm uses the stored moving averages, so the
  # teacher needs no axis name and is identical on every replica.
  model = build_model(meta["model"], num_classes=num_classes, axis_name=None)
  size = config.data.image_size
  expected = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  ckpt_lib.check_shapes(variables, expected, f"teacher export {path}")
  return model, variables, meta


def distill_replica_step(state: train.TrainState, teacher_vars: Any,
                         batch: Dict[str, jax.Array], *, student, teacher, tx,
                         distill_cfg: ml_collections.ConfigDict,
                         schedule: optax.Schedule
                         ) -> Tuple[train.TrainState, Dict[str, jax.Array]]:
  """One student update on one replica (called under `per_replica`).

  Args:
    state: the replicated student train state.
    teacher_vars: the replicated, frozen teacher variables.
    batch: this replica's {'images': [n, H, W, 3], 'labels': [n]}.
    student: the student model (BatchNorm bound to `AXIS`).
    teacher: the teacher model (inference mode).
    tx: the student's optimizer.
    distill_cfg: `config.distill`.
    schedule: learning-rate schedule (for logging).

  Returns:
    The new state and pmean'd scalar metrics.
  """
  images, labels = batch["images"], batch["labels"]
  teacher_logits = jax.lax.stop_gradient(
      teacher.apply(teacher_vars, images, train=False)["logits"])

  def loss_fn(params):
    out, updates = student.apply(
        {"params": params, "batch_stats": state.batch_stats}, images,
        train=True, mutable=["batch_stats"])
    logits = out["logits"]
    soft = distill_loss(logits, teacher_logits, distill_cfg.temperature)
    metrics = {"distill_loss": soft}
    loss = soft
    if distill_cfg.label_weight > 0:
      hard = train.cross_entropy(logits, labels)
      metrics["label_loss"] = hard
      loss = loss + distill_cfg.label_weight * hard
    pred = jnp.argmax(logits, -1)
    metrics["teacher_agreement"] = jnp.mean(
        pred == jnp.argmax(teacher_logits, -1))
    # Monitoring only: the labels reach the loss only through label_weight.
    metrics["train_acc"] = jnp.mean(pred == labels)
    return loss, (updates["batch_stats"], dict(metrics, loss=loss))

  (_, (batch_stats, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Equal local batches: the mean of replica gradients is the global one.
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                 learning_rate=schedule(state.step))
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, jax.lax.pmean(metrics, AXIS)


def make_distill_step(student, teacher, tx, distill_cfg, schedule,
                      mesh) -> Callable:
  """Returns jit(shard_map(distill_replica_step)) of (state, teacher, batch)."""
  fn = functools.partial(distill_replica_step, student=student,
                         teacher=teacher, tx=tx, distill_cfg=distill_cfg,
                         schedule=schedule)
  mapped = parallel.per_replica(fn, mesh, in_specs=(P(), P(), P(AXIS)),
                                out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


def build_student(config: ml_collections.ConfigDict, num_classes: int,
                  schedule_info: config_lib.Schedule, mesh):
  """Builds the student (trainable classifier head), optimizer and state.

  Returns:
    (student, tx, schedule, state).
  """
  student = build_model(train.model_config(config), num_classes=num_classes,
                        axis_name=AXIS, sup_stop_gradient=False)
  schedule = optim.make_schedule(schedule_info.peak_lr,
                                 schedule_info.total_steps,
                                 schedule_info.warmup_steps)
  tx = optim.make_optimizer(config.optim, schedule)
  state = train.create_train_state(student, tx, config.data.image_size,
                                   config.seed, mesh)
  return student, tx, schedule, state


def evaluate_classifier(config: ml_collections.ConfigDict, model,
                        variables: Any, mesh) -> Dict[str, float]:
  """Exact top-1/top-5 of a model's classifier head on the eval split."""
  step = evaluate.make_classifier_eval_step(evaluate.probe_logits_fn(model),
                                            mesh)
  batches = data_lib.make_eval_iterator(
      config.data, config.aug, config.data.eval_split, config.eval.batch_size)
  return evaluate.run_classifier_eval(step, variables, batches, mesh)



def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Distils the teacher into a student in `workdir` (resuming if possible).

  Args:
    config: a validated configuration with mode 'distill'.
    workdir: directory for checkpoints, TensorBoard events, results and the
      student's export (`<workdir>/export`).

  Returns:
    The results dict also written to `<workdir>/distill_results.json`:
    {'step', 'student': accuracies, 'teacher': accuracies (when
    distill.eval_teacher), 'teacher_export', 'config'}.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  teacher, teacher_host, meta = load_teacher(config)  # fails before compiling
  info = data_lib.dataset_info(config.data)
  num_classes = int(meta["num_classes"])
  if num_classes != info.num_classes:
    raise ValueError(f"config.distill.teacher_export="
                     f"{config.distill.teacher_export!r} is invalid: the "
                     f"teacher has {num_classes} classes, the dataset "
                     f"{info.num_classes}")
  sched = config_lib.derive_schedule(
      config, info.num_examples[config.data.train_split])
  student, tx, schedule, state = build_student(config, num_classes, sched,
                                               mesh)
  teacher_vars = parallel.replicate(mesh, teacher_host)
  step_fn = make_distill_step(student, teacher, tx, config.distill, schedule,
                              mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  if start:
    logging.info("Resuming from checkpoint at step %d in %s", start,
                 checkpointer.directory)
    state = checkpointer.restore(start, state)
  writer = pretrain.make_writer(workdir)
  batches = data_lib.make_supervised_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      start_step=start)
  total = sched.total_steps
  logging.info("Distilling %s into the student: %d steps (%d per epoch), "
               "peak lr %.4g, %d devices", config.distill.teacher_export,
               total, sched.steps_per_epoch, sched.peak_lr,
               jax.device_count())

  pending, t_log, step_log = [], time.time(), start
  for step in range(start + 1, total + 1):
    batch = parallel.host_to_global(mesh, next(batches))
    if step == start + 1:
      logging.info("Initial compilation, this might take some minutes...")
      t0 = time.time()
    state, metrics = step_fn(state, teacher_vars, batch)
    if step == start + 1:
      jax.block_until_ready(metrics)
      logging.info("Initial compilation and first step took %.1f s",
                   time.time() - t0)
      t_log, step_log = time.time(), step
    pending.append(metrics)
    if config_lib.is_time(step, config.train.log_every_steps, total):
      scalars, pending = train.mean_metrics(pending), []
      now = time.time()
      if step > step_log:
        steps_per_s = (step - step_log) / (now - t_log)
        scalars["steps_per_sec"] = steps_per_s
        scalars["images_per_sec"] = steps_per_s * config.train.global_batch
        scalars["eta_minutes"] = (total - step) / steps_per_s / 60
      t_log, step_log = now, step
      writer.write_scalars(step, scalars)
    if config_lib.is_time(step, config.train.checkpoint_every_steps, total):
      checkpointer.save(step, state)
    if (config.train.eval_every_steps > 0 and step < total and
        config_lib.is_time(step, config.train.eval_every_steps, total)):
      acc = evaluate_classifier(config, student, state.variables, mesh)
      writer.write_scalars(step, {"eval/student_top1": acc["top1"]})

  results = {"step": int(total),
             "teacher_export": config.distill.teacher_export,
             "config": config.to_dict()}
  results["student"] = evaluate_classifier(config, student, state.variables,
                                           mesh)
  scalars = {"eval/student_top1": results["student"]["top1"]}
  if config.distill.eval_teacher:
    results["teacher"] = evaluate_classifier(config, teacher, teacher_vars,
                                             mesh)
    scalars["eval/teacher_top1"] = results["teacher"]["top1"]
  writer.write_scalars(total, scalars)
  logging.info("Student on %s: top-1 %.4f over %d examples",
               config.data.eval_split, results["student"]["top1"],
               results["student"]["num_examples"])
  checkpointer.close()
  writer.flush()
  ckpt_lib.save_export(
      os.path.join(workdir, "export"), state.variables,
      train.model_config(config), num_classes, config.data.image_size,
      extra={"kind": "distilled student", "step": int(total),
             "teacher_export": config.distill.teacher_export})
  evaluate.write_results(workdir, "distill_results", results)
  return results
