"""The `distill` mode (SimCLR v2, step 3): a frozen teacher trains a student.

The teacher is an export with a classifier head; the student is the
configured model (the same or a smaller ResNet), randomly initialised. Both
see the same crop+flip view of each training image, and the student
minimises the cross-entropy between the teacher's and its own
temperature-softened class distributions (SimCLR v2, eq. 2):

  L_distill = -mean_i sum_y P_T(y | x_i; tau) log P_S(y | x_i; tau),

optionally plus `label_weight` times the usual cross-entropy with the labels.
The student is evaluated exactly and exported to `<workdir>/export`.

A pretraining run whose online linear probe serves as the teacher is exported
with its probe head by
  python -m simclr_jax.export --workdir=runs/digits_supcon \
      --out=runs/digits_supcon_teacher
"""

import functools
import os
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simclr_jax import config as config_lib
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.engine import loop
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import encoders
from simclr_jax.evals import registry as evals_registry
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config

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


def distill_replica_step(state: state_lib.TrainState, teacher_vars: Any,
                         batch: Dict[str, jax.Array], *, student, teacher, tx,
                         distill_cfg: ml_collections.ConfigDict,
                         schedule: optax.Schedule
                         ) -> Tuple[state_lib.TrainState, Dict[str, jax.Array]]:
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
      hard = losses.cross_entropy(logits, labels)
      metrics["label_loss"] = hard
      loss = loss + distill_cfg.label_weight * hard
    metrics["teacher_agreement"] = losses.accuracy(
        logits, jnp.argmax(teacher_logits, -1))
    # Monitoring only: the labels reach the loss only through label_weight.
    metrics["train_acc"] = losses.accuracy(logits, labels)
    return loss, (updates["batch_stats"], dict(metrics, loss=loss))

  (_, (batch_stats, metrics)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Equal local batches: the mean of replica gradients is the global one.
  grads = jax.lax.pmean(grads, AXIS)
  metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                 learning_rate=schedule(state.step))
  return (state.apply_gradients(grads, tx, batch_stats),
          jax.lax.pmean(metrics, AXIS))


def make_distill_step(student, teacher, tx, distill_cfg, schedule,
                      mesh) -> Callable:
  """Returns jit(shard_map(distill_replica_step)) of (state, teacher, batch)."""
  fn = functools.partial(distill_replica_step, student=student,
                         teacher=teacher, tx=tx, distill_cfg=distill_cfg,
                         schedule=schedule)
  return state_lib.make_step(fn, mesh, num_replicated=1)


class Distill(loop.Mode):
  """Distillation of `distill.teacher_export` into the configured student."""

  name = "distill"
  # The student, and the teacher as the reference accuracy.
  evaluators = ("classifier", "teacher")
  default_evaluators = evaluators

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """The `config.distill` fields."""
    dc = config.distill
    if not dc.teacher_export:
      config_lib.fail("distill.teacher_export", dc.teacher_export, "the "
                      "export directory of the teacher is required in mode "
                      f"{self.name!r}")
    if dc.temperature <= 0:
      config_lib.fail("distill.temperature", dc.temperature, "must be > 0")
    if dc.label_weight < 0:
      config_lib.fail("distill.label_weight", dc.label_weight, "must be >= 0")

  def build(self, config: ml_collections.ConfigDict, mesh,
            workdir: str) -> loop.Job:
    """The distillation job; see `engine.loop.Job`."""
    teacher, teacher_host, meta = encoders.load_teacher(config)
    from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    info = data_lib.dataset_info(config.data)
    num_classes = int(meta["num_classes"])
    if num_classes != info.num_classes:
      config_lib.fail("distill.teacher_export", config.distill.teacher_export,
                      f"the teacher has {num_classes} classes, the dataset "
                      f"{info.num_classes}")
    sched = config_lib.derive_schedule(
        config, info.num_examples[config.data.train_split])
    model_cfg = model_config(config)
    student = build_model(model_cfg, num_classes=num_classes, axis_name=AXIS,
                          sup_stop_gradient=False)
    schedule, tx = optim.schedule_and_optimizer(config.optim, sched)
    state = state_lib.create_train_state(student, tx, config.data.image_size,
                                         config.seed, mesh)
    teacher_vars = parallel.replicate(mesh, teacher_host)
    evaluators = evals_registry.build(evals_registry.Context(
        config, mesh, model=student, classifier_key="student",
        teacher=(teacher, teacher_vars)))

    write_export = export_lib.exporter(
        os.path.join(workdir, "export"), model_cfg, num_classes,
        config.data.image_size, config.aug.eval_crop_proportion)

    def finish(state, results):
      del results  # unchanged
      write_export(parallel.to_host(state.variables),
                   {"kind": "distilled student",
                    "step": int(sched.total_steps),
                    "teacher_export": config.distill.teacher_export})

    return loop.Job(
        state=state,
        step_fn=make_distill_step(student, teacher, tx, config.distill,
                                  schedule, mesh),
        step_args=(teacher_vars,),
        batches=lambda start: data_lib.make_supervised_iterator(
            config.data, config.aug, config.train.global_batch, config.seed,
            start_step=start),
        total_steps=sched.total_steps,
        images_per_step=config.train.global_batch, evaluators=evaluators,
        finish=finish,
        results={"teacher_export": config.distill.teacher_export},
        description=f"Distilling {config.distill.teacher_export} into the "
        f"student ({sched.steps_per_epoch} steps per epoch, peak lr "
        f"{sched.peak_lr:.4g})")


MODE = Distill()

run = MODE.run  # run(config, workdir, guard=None): the mode in the loop
