"""The pretraining loop: data -> step -> metrics, checkpoints and evaluation.

Resumes automatically from the newest checkpoint in the workdir; the data
iterator is positioned at the restored step, so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import distributed
from simclr_jax import evaluate
from simclr_jax import online_eval
from simclr_jax import parallel
from simclr_jax import preemption
from simclr_jax import train
from simclr_jax import visualize


def make_writer(workdir: str) -> metric_writers.MetricWriter:
  """Console + TensorBoard writer on process 0; logging only elsewhere."""
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def run(config: ml_collections.ConfigDict, workdir: str,
        guard: Optional[preemption.PreemptionGuard] = None) -> Dict[str, Any]:
  """Pretrains (or resumes) in `workdir` and returns the final results.

  Args:
    config: a validated configuration with mode 'pretrain'.
    workdir: directory for checkpoints, TensorBoard events and results.
    guard: the signal handling (default: SIGTERM and SIGINT stop the run).

  Returns:
    The results dict also written to `<workdir>/pretrain_results.json`.

  Raises:
    preemption.Preempted: after a stop signal, once the checkpoint of the
      current step is committed on every process.
    preemption.NonFiniteError: at the first non-finite loss, gradient norm
      or state about to be saved; no such checkpoint is written.
  """
  guard = guard or preemption.PreemptionGuard()
  with guard:  # Handlers are installed only while training.
    return _run(config, workdir, guard)


def _run(config: ml_collections.ConfigDict, workdir: str,
         guard: preemption.PreemptionGuard) -> Dict[str, Any]:
  """The body of `run`, with `guard`'s signal handlers installed."""
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  # Hosts started with different flags would hang in (or corrupt) collectives.
  distributed.check_config_agreement(config, {"workdir": workdir})
  info = data_lib.dataset_info(config.data)
  sched = config_lib.derive_schedule(
      config, info.num_examples[config.data.train_split])
  model, _, schedule, state, step_fn = train.build_pretrain(
      config, info.num_classes, sched, mesh)
  checkpointer, start = ckpt_lib.open_for_resume(
      workdir, config.train.keep_checkpoints, state, config.train.start_over)
  # Exports and evaluations read the architecture back from the workdir;
  # written only once the workdir's checkpoints are known to fit this model.
  evaluate.write_results(workdir, "config", config.to_dict())
  if start:
    logging.info("Resuming from checkpoint at step %d in %s", start,
                 checkpointer.directory)
    state = checkpointer.restore(start, state)
  writer = make_writer(workdir)
  # The config the checkpoints were made with: export and linear eval read it.
  evaluate.write_results(workdir, "config", config.to_dict())
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  # Augmentation grid now; embedding map + similarity heatmap at each eval.
  pictures = visualize.start_pretraining(config, model, mesh, workdir, writer,
                                         step=start)
  batches = data_lib.make_pretrain_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      start_step=start)
  total = sched.total_steps
  logging.info("Pretraining %d steps (%d per epoch), peak lr %.4g, %d devices",
               total, sched.steps_per_epoch, sched.peak_lr, jax.device_count())

  pending, last_log_time, last_log_step = [], None, start
  last_saved = start  # newest checkpoint known good, for error messages
  for step in range(start + 1, total + 1):
    batch = parallel.host_to_global(mesh, next(batches))
    if step == start + 1:
      logging.info("Initial compilation, this might take some minutes...")
      t0 = time.time()
      state, metrics = step_fn(state, batch)
      jax.block_until_ready(metrics)
      logging.info("Initial compilation and first step took %.1f s",
                   time.time() - t0)
      last_log_time, last_log_step = time.time(), step
    else:
      state, metrics = step_fn(state, batch)
    pending.append((step, metrics))
    log_now = config_lib.is_time(step, config.train.log_every_steps, total)
    if log_now:
      pending = jax.device_get(pending)  # the one host sync per log period
      _check_finite(checkpointer, pending, None, step, last_saved)
      scalars = train.mean_metrics([m for _, m in pending])
      pending = []
      now = time.time()
      if step > last_log_step:
        steps_per_s = (step - last_log_step) / (now - last_log_time)
        scalars["steps_per_sec"] = steps_per_s
        scalars["images_per_sec"] = steps_per_s * config.train.global_batch
        scalars["eta_minutes"] = (total - step) / steps_per_s / 60
      last_log_time, last_log_step = now, step
      writer.write_scalars(step, scalars)
    stop = guard.should_stop(step, sync=log_now)
    if stop or config_lib.is_time(
        step, config.train.checkpoint_every_steps, total):
      _check_finite(checkpointer, pending, state, step, last_saved)
      checkpointer.save(step, state)
      last_saved = step
    if stop:
      checkpointer.close()  # committed on every process before exiting
      writer.flush()
      logging.warning("Preempted (%s): checkpoint of step %d committed in %s;"
                      " rerun the same command to resume.", stop, step,
                      checkpointer.directory)
      raise preemption.Preempted(step, stop)
    if pictures and config_lib.is_time(step, config.train.eval_every_steps,
                                       total):
      pictures.write(step, state.variables)
    if step < total and config_lib.is_time(
        step, config.train.eval_every_steps, total):
      _, scalars = online_eval.run(config, model, state.variables,
                                   info.num_classes, mesh, final=False)
      writer.write_scalars(step, scalars)

  results = {"step": int(total), "config": config.to_dict()}
  if config.train.probe:
    probe = online_eval.online_probe(config, model, state.variables, mesh)
    results["probe"] = probe
    writer.write_scalars(total, {"eval/probe_top1": probe["top1"],
                                 "eval/probe_top5": probe["top5"]})
    logging.info("Online linear probe on %s: top-1 %.4f over %d examples",
                 config.data.eval_split, probe["top1"], probe["num_examples"])
  final, scalars = online_eval.run(config, model, state.variables,
                                   info.num_classes, mesh, final=True)
  results.update(final)
  writer.write_scalars(total, scalars)
  checkpointer.close()
  writer.flush()
  evaluate.write_results(workdir, "pretrain_results", results)
  return results


def _check_finite(checkpointer: ckpt_lib.Checkpointer,
                  pending: List[Tuple[int, Dict[str, Any]]], state: Any,
                  step: int, last_saved: int) -> None:
  """Stops the run at a non-finite loss/grad norm (or state, when given).

  Saves already started are committed first: they hold finite states.
  """
  guarded = [(s, {k: m[k] for k in preemption.GUARDED_METRICS if k in m})
             for s, m in pending]
  try:
    preemption.check_finite_metrics(jax.device_get(guarded),
                                    last_good=last_saved)
    if state is not None:
      preemption.check_finite_tree(state, step, last_good=last_saved)
  except preemption.NonFiniteError:
    checkpointer.close()
    raise


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> Dict:
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
