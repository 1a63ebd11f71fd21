"""One process of the multi-host tests (started by launch/local.sh or directly).

Trains the tiny digits model for a few steps on a fixed global batch stream
that does not depend on the topology (each process feeds its rows of the
same global batch), evaluates the online probe and writes a metric with the
pretraining loop's own functions, saves a checkpoint with the project's
Checkpointer, optionally restores another run's checkpoint, and records what
this process read of each split. Writes `<out>/process_<i>.npz` and `.json`.

  python tests/multihost_worker.py --out=DIR --ckpt=DIR [--restore=DIR]
      [--coordinator_address=127.0.0.1:PORT --num_processes=2 --process_id=0]
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import digits
from simclr_jax import distributed


def tiny_config():
  """The tiny digits config every run of the multi-host tests uses."""
  config = digits.get_config("tiny")
  config.distributed.heartbeat_timeout_s = 30  # fail fast in tests
  return config


def _flat(tree):
  import jax  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in flat}


def run(out_dir: str, ckpt_dir: str, restore_dir: str, steps: int,
        mesh=None) -> None:
  """Trains, checkpoints, restores and records shards in this process.

  Args:
    out_dir: where `process_<i>.npz/json` are written.
    ckpt_dir: workdir to save a checkpoint at the last step in ('' = none).
    restore_dir: workdir whose latest checkpoint to restore ('' = none).
    steps: training steps.
    mesh: the device mesh (default: all global devices).
  """
  import jax
  import numpy as np
  from simclr_jax.engine import checkpoint as ckpt_lib
  from simclr_jax import config as config_lib
  from simclr_jax import data as data_lib
  from simclr_jax.engine import writer as writer_lib
  from simclr_jax.evals import classifier
  from simclr_jax import parallel
  from simclr_jax.modes import pretrain

  config = tiny_config()
  pi, pc = jax.process_index(), jax.process_count()
  mesh = parallel.make_mesh() if mesh is None else mesh
  config_lib.validate(config, mesh.size, pc)
  distributed.check_config_agreement(config, {"workdir": ckpt_dir})
  info = data_lib.dataset_info(config.data)
  sched = config_lib.derive_schedule(
      config, info.num_examples[config.data.train_split])
  model, _, _, state, step_fn = pretrain.build_pretrain(config, info.num_classes,
                                                 sched, mesh)
  out = {"process_index": pi, "process_count": pc, "devices": mesh.size}
  arrays = {}

  # The same global batches in every topology: all processes build the
  # single-process stream and feed their contiguous block of rows.
  stream = data_lib.make_pretrain_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      process_index=0, process_count=1)
  local = config.train.global_batch // pc
  losses = []
  for _ in range(steps):
    batch = jax.tree.map(lambda x: x[pi * local:(pi + 1) * local],
                         next(stream))
    state, metrics = step_fn(state, parallel.host_to_global(mesh, batch))
    losses.append(float(parallel.to_host(metrics["loss"])))
  out["losses"] = losses
  arrays.update({f"params/{k}": v for k, v in
                 _flat(parallel.to_host(state.params)).items()})
  arrays.update({f"stats/{k}": v for k, v in
                 _flat(parallel.to_host(state.batch_stats)).items()})
  if steps:
    # The loop's own evaluation and writer: exact counts over all processes,
    # TensorBoard events from process 0 only.
    out["probe"] = classifier.ClassifierEval("probe", config, model, mesh).run(
        state.variables, steps)
    writer = writer_lib.Writer(os.path.join(out_dir, "tb"))
    writer.write_scalars(steps, {"loss": losses[-1],
                                 "probe_top1": out["probe"]["top1"]})
    writer.close()
  if ckpt_dir:
    ckpt = ckpt_lib.Checkpointer(ckpt_dir, keep=1)
    ckpt.save(steps, state)
    ckpt.close()
  if restore_dir:
    ckpt = ckpt_lib.Checkpointer(restore_dir, keep=1)
    restored = ckpt.restore(ckpt.latest_step(), state)
    ckpt.close()
    out["restored_step"] = int(parallel.to_host(restored.step))
    arrays.update({f"restored/{k}": v for k, v in
                   _flat(parallel.to_host(restored.params)).items()})

  # What this process reads (default process index and count): table rows,
  # valid eval images, and its first augmented pretraining batch.
  for split in ("train", "test"):
    table = data_lib.sources.load_table(config.data, split, pi, pc)
    arrays[f"ids/{split}"] = table.ids
  rows = [b["images"][b["mask"]] for b in data_lib.make_eval_iterator(
      config.data, config.aug, "test", config.eval.batch_size)]
  arrays["eval_images"] = np.concatenate(rows)
  out["eval_batches"] = len(rows)
  arrays["first_batch"] = next(data_lib.make_pretrain_iterator(
      config.data, config.aug, config.train.global_batch, config.seed))["images"]

  # A batch-sharded array cannot be fetched whole by one process.
  if pc > 1:
    try:
      parallel.to_host(parallel.host_to_global(mesh, {"x": np.zeros((4, 2))}))
      out["to_host_error"] = ""
    except ValueError as e:
      out["to_host_error"] = str(e)

  # Processes started with different configs must all fail, naming the field.
  if pc > 1:
    other = config.copy_and_resolve_references()
    other.loss.temperature = config.loss.temperature * (1 + pi)
    try:
      distributed.check_config_agreement(other, {"workdir": ckpt_dir})
      out["mismatch_error"] = ""
    except ValueError as e:
      out["mismatch_error"] = str(e)

  os.makedirs(out_dir, exist_ok=True)
  np.savez(os.path.join(out_dir, f"process_{pi}.npz"), **arrays)
  with open(os.path.join(out_dir, f"process_{pi}.json"), "w") as f:
    json.dump(out, f)


def main(argv):
  del argv
  distributed.initialize_from_flags(tiny_config())
  run(FLAGS.out, FLAGS.ckpt, FLAGS.restore, FLAGS.steps)


if __name__ == "__main__":
  distributed.define_flags()
  flags.DEFINE_string("out", None, "Directory for per-process results.")
  flags.DEFINE_string("ckpt", "", "Workdir to save a checkpoint in.")
  flags.DEFINE_string("restore", "", "Workdir whose checkpoint to restore.")
  flags.DEFINE_integer("steps", 3, "Training steps.")
  flags.mark_flags_as_required(["out"])
  FLAGS = flags.FLAGS
  app.run(main)
