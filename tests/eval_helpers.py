"""Shared set-up of the evaluation tests: a tiny digits pretraining workdir.

The workdir holds a real checkpoint (written by the Checkpointer, with the
config.json pretraining writes) of an untrained tiny model whose parameters
and BatchNorm statistics are perturbed, so that an export or a linear eval
that dropped or reset any of them would be noticed.
"""

import jax
import numpy as np

from configs import digits
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax.engine import results as results_lib
from simclr_jax import parallel
from simclr_jax.modes import pretrain


def tiny_config():
  """The tiny digits pretraining config used by the evaluation tests."""
  config = digits.get_config("tiny")
  config.eval.batch_size = 64  # 360 test digits: the last batch is padded
  return config


def with_run_settings(config, steps: int = 6):
  """`config` with batch 32, evaluation batch 64, `steps` steps, a log every
  step and a checkpoint every 2 steps."""
  config.train.global_batch = 32
  config.eval.batch_size = 64
  config.train.steps = steps
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  return config


def tiny_run_config(steps: int = 6):
  """configs/digits.py:tiny `with_run_settings` (the shared pretraining run
  of conftest's `tiny_pretrain_run`)."""
  return with_run_settings(digits.get_config("tiny"), steps)


def make_workdir(workdir: str, step: int = 4):
  """Writes a checkpoint at `step` and config.json; returns (config, state)."""
  config = tiny_config()
  mesh = parallel.make_mesh()
  info = data_lib.dataset_info(config.data)
  sched = config_lib.derive_schedule(config, info.num_examples["train"])
  _, _, _, state, _ = pretrain.build_pretrain(config, info.num_classes, sched,
                                           mesh)
  host = jax.device_get(state)
  rng = np.random.default_rng(0)

  def perturb(path, x):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or x.ndim == 0:
      return x
    noise = rng.normal(scale=0.1, size=x.shape).astype(x.dtype)
    name = jax.tree_util.keystr(path)
    # Variances stay positive; everything else just moves.
    return np.abs(x + noise) + 0.5 if "var" in name else x + noise

  host = host.replace(
      params=jax.tree_util.tree_map_with_path(perturb, host.params),
      batch_stats=jax.tree_util.tree_map_with_path(perturb, host.batch_stats),
      step=np.asarray(step, np.int32))
  state = parallel.replicate(mesh, host)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=3)
  checkpointer.save(step, state)
  checkpointer.close()
  results_lib.write_results(workdir, "config", config.to_dict())
  return config, host


class Recorder:
  """A metric writer that keeps every scalar (stands in for the event writer)."""

  def __init__(self, logdir=None):
    del logdir  # nothing is written
    self.scalars = {}

  def write_scalars(self, step, scalars):
    # Several writes per step (training metrics, then evaluations) merge.
    self.scalars.setdefault(int(step), {}).update(scalars)

  def write_hparams(self, hparams):
    del hparams

  def write_images(self, step, images):
    del step, images

  def flush(self):
    pass

  def close(self):
    pass
