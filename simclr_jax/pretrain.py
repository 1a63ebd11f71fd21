"""The pretraining loop: data -> step -> metrics, checkpoints and evaluation.

Resumes automatically from the newest checkpoint in the workdir; the data
iterator is positioned at the restored step, so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

import time
from typing import Any, Dict

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import evaluate
from simclr_jax import online_eval
from simclr_jax import parallel
from simclr_jax import train


def make_writer(workdir: str) -> metric_writers.MetricWriter:
  """Console + TensorBoard writer on process 0; logging only elsewhere."""
  return metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)


def evaluate_probe(config, model, state, mesh) -> Dict[str, float]:
  """Exact top-1/top-5 of the online linear probe on the eval split."""
  step = evaluate.make_classifier_eval_step(evaluate.probe_logits_fn(model),
                                            mesh)
  batches = data_lib.make_eval_iterator(
      config.data, config.aug, config.data.eval_split, config.eval.batch_size)
  return evaluate.run_classifier_eval(step, state.variables, batches, mesh)


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Pretrains (or resumes) in `workdir` and returns the final results.

  Args:
    config: a validated configuration with mode 'pretrain'.
    workdir: directory for checkpoints, TensorBoard events and results.

  Returns:
    The results dict also written to `<workdir>/pretrain_results.json`.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  info = data_lib.dataset_info(config.data)
  sched = config_lib.derive_schedule(
      config, info.num_examples[config.data.train_split])
  model, _, schedule, state, step_fn = train.build_pretrain(
      config, info.num_classes, sched, mesh)
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  if start:
    logging.info("Resuming from checkpoint at step %d in %s", start,
                 checkpointer.directory)
    state = checkpointer.restore(start, state)
  writer = make_writer(workdir)
  # The config the checkpoints were made with: export and linear eval read it.
  evaluate.write_results(workdir, "config", config.to_dict())
  if start == 0:
    writer.write_hparams({k: v for k, v in _flat(config).items()})
  batches = data_lib.make_pretrain_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      start_step=start)
  total = sched.total_steps
  logging.info("Pretraining %d steps (%d per epoch), peak lr %.4g, %d devices",
               total, sched.steps_per_epoch, sched.peak_lr, jax.device_count())

  pending, last_log_time, last_log_step = [], None, start
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
    pending.append(metrics)
    if config_lib.is_time(step, config.train.log_every_steps, total):
      scalars = train.mean_metrics(pending)
      pending = []
      now = time.time()
      if step > last_log_step:
        steps_per_s = (step - last_log_step) / (now - last_log_time)
        scalars["steps_per_sec"] = steps_per_s
        scalars["images_per_sec"] = steps_per_s * config.train.global_batch
        scalars["eta_minutes"] = (total - step) / steps_per_s / 60
      last_log_time, last_log_step = now, step
      writer.write_scalars(step, scalars)
    if config_lib.is_time(step, config.train.checkpoint_every_steps, total):
      checkpointer.save(step, state)
    if step < total and config_lib.is_time(
        step, config.train.eval_every_steps, total):
      _, scalars = online_eval.run(config, model, state.variables,
                                   info.num_classes, mesh, final=False)
      writer.write_scalars(step, scalars)

  results = {"step": int(total), "config": config.to_dict()}
  if config.train.probe:
    probe = evaluate_probe(config, model, state, mesh)
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


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> Dict:
  out = {}
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
