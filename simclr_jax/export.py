"""Exports a pretraining workdir as an encoder artifact, and loads encoders back.

  python -m simclr_jax.export --workdir=runs/digits --out=runs/digits_export

writes parameters and BatchNorm statistics (orbax), the model config as JSON
and the image convention (see `checkpoint.save_export`). The official TF2
converter (`simclr_jax.convert`) writes the same format, so every evaluation
runs on either. `load_encoder` is the single place where linear evaluation and
fine-tuning get their starting weights: an export, a pretraining checkpoint,
or a random initialisation (the baseline).
"""

import json
import os
from typing import Any, Dict, Tuple

import jax
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train
from simclr_jax.models import build_model

CONFIG_FILE = "config.json"  # the pretraining config, written by pretrain.run
_PROBE_BIAS = "params/sup_head/dense/bias"


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The configuration a pretraining workdir was created with.

  Args:
    workdir: a pretraining workdir.

  Returns:
    The ConfigDict stored in `<workdir>/config.json`.

  Raises:
    ValueError: if the workdir has no stored config.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"workdir {workdir!r} has no {CONFIG_FILE}: it is not a "
                     "pretraining workdir of python -m simclr_jax.main")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_pretrain_checkpoint(workdir: str, step: int = 0
                             ) -> Tuple[Dict[str, Any], Dict[str, Any], int,
                                        int]:
  """Reads the model variables of a pretraining checkpoint.

  Args:
    workdir: the pretraining workdir.
    step: checkpoint step; 0 = the newest.

  Returns:
    (variables, model_cfg, num_classes, step): host NumPy {'params',
    'batch_stats'}, the architecture dict, the online probe's classes.
  """
  pre = read_workdir_config(workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, pre.train.keep_checkpoints)
  steps = checkpointer.all_steps()
  if not steps:
    raise ValueError(f"init.checkpoint_dir={workdir!r} holds no checkpoint")
  step = step or max(steps)
  if step not in steps:
    raise ValueError(f"init.checkpoint_step={step} is invalid: the workdir "
                     f"holds steps {steps}")
  shapes = checkpointer.item_shapes(step)
  num_classes = int(shapes.get(_PROBE_BIAS, (0,))[0])
  model_cfg = train.model_config(pre)
  model = build_model(model_cfg, num_classes=num_classes)
  tx = optim.make_optimizer(pre.optim, optax.constant_schedule(0.0))
  size = pre.data.image_size

  def abstract_state():
    variables = model.init(jax.random.PRNGKey(0),
                           jax.numpy.zeros((1, size, size, 3)), train=False)
    return train.TrainState(step=jax.numpy.zeros((), jax.numpy.int32),
                            params=variables["params"],
                            batch_stats=variables.get("batch_stats", {}),
                            opt_state=tx.init(variables["params"]))

  sharding = NamedSharding(parallel.make_mesh(), P())
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      jax.eval_shape(abstract_state))
  state = checkpointer.restore(step, target)
  checkpointer.close()
  variables = parallel.to_host(state.variables)
  return variables, model_cfg, num_classes, int(step)


def export_workdir(workdir: str, out: str, step: int = 0) -> Dict[str, Any]:
  """Writes the export of a pretraining checkpoint.

  Args:
    workdir: the pretraining workdir.
    out: the export directory (replaced atomically if it exists).
    step: checkpoint step; 0 = the newest.

  Returns:
    The export's meta data.
  """
  variables, model_cfg, num_classes, step = load_pretrain_checkpoint(workdir,
                                                                     step)
  pre = read_workdir_config(workdir)
  ckpt_lib.save_export(out, variables, model_cfg, num_classes,
                       pre.data.image_size, extra={
                           "source": "simclr_jax pretraining",
                           "workdir": os.path.abspath(workdir), "step": step,
                           "dataset": pre.data.name or pre.data.source})
  return ckpt_lib.read_export_meta(out)


def check_export(variables: Dict[str, Any], model_cfg: Dict[str, Any],
                 num_classes: int, path: str) -> None:
  """Raises ValueError naming every stored leaf that the model does not expect.

  Args:
    variables: the loaded {'params', 'batch_stats'}.
    model_cfg: the architecture the variables are meant for.
    num_classes: classes of the stored supervised head (0 = none).
    path: the export, for the message.
  """
  model = build_model(model_cfg, num_classes=num_classes)
  expected = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         jax.numpy.zeros((1, 32, 32, 3)), train=False))
  ckpt_lib.check_shapes(variables, dict(expected), f"export {path}")


def load_encoder(config: ml_collections.ConfigDict
                 ) -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
  """The starting weights named by `config.init`.

  Args:
    config: a configuration whose `init` names exactly one source.

  Returns:
    (variables, model_cfg, source): host variables {'params',
    'batch_stats'}, the architecture, and JSON-able facts about the source
    ('kind', 'path', 'step').
  """
  init = config.init
  if init.export:
    variables, meta = ckpt_lib.load_export(init.export)
    model_cfg = meta["model"]
    check_export(variables, model_cfg, meta["num_classes"], init.export)
    if meta["image_size"] != config.data.image_size:
      logging.warning("export %s was made at %d px, evaluating at %d px",
                      init.export, meta["image_size"], config.data.image_size)
    source = {"kind": "export", "path": os.path.abspath(init.export),
              "step": meta.get("extra", {}).get("step")}
  elif init.checkpoint_dir:
    variables, model_cfg, _, step = load_pretrain_checkpoint(
        init.checkpoint_dir, int(init.checkpoint_step))
    source = {"kind": "checkpoint", "step": step,
              "path": os.path.abspath(init.checkpoint_dir)}
  elif init.random:
    model_cfg = train.model_config(config)
    model = build_model(model_cfg, num_classes=0)
    variables = train.init_variables(model, config.data.image_size,
                                     config.seed)
    source = {"kind": "random", "seed": int(config.seed), "step": 0}
  else:
    raise ValueError("config.init names no encoder: set init.export, "
                     "init.checkpoint_dir or init.random")
  variables = jax.tree.map(np.asarray, dict(variables))
  variables.setdefault("batch_stats", {})
  return variables, dict(model_cfg), source


def main(argv) -> None:
  """Exports --workdir (its newest checkpoint, or --step) to --out."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  meta = export_workdir(fv.workdir, fv.out, fv.step)
  logging.info("wrote export %s (step %s)", fv.out, meta["extra"]["step"])
  print(f"exported {fv.workdir} step {meta['extra']['step']} to {fv.out}")


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string("workdir", None, "pretraining workdir to export")
  flags.DEFINE_string("out", None, "export directory to write")
  flags.DEFINE_integer("step", 0, "checkpoint step (0 = newest)")
  flags.mark_flags_as_required(["workdir", "out"])


if __name__ == "__main__":
  define_flags()
  app.run(main)
