"""The one encoder loader: every source of weights, for every mode and tool.

Sources: an export (ours, or a converted official checkpoint), a pretraining
workdir (its newest or a given checkpoint), a random initialisation (the
baseline), and a distillation teacher (an export with a classifier head).
Each returns host NumPy variables checked against the model they are for.
"""

import functools
import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import config as config_lib
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import results as results_lib
from simclr_jax.engine import state as state_lib
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config

_PROBE_BIAS = "params/sup_head/dense/bias"


def expected_variables(model, image_size: int) -> Any:
  """Shape structs of `model`'s variables (no computation)."""
  return jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))


def load_checkpoint(workdir: str, step: int = 0
                    ) -> Tuple[Dict[str, Any], Dict[str, Any], int, int]:
  """Reads the model variables of a pretraining checkpoint.

  Args:
    workdir: the pretraining workdir.
    step: checkpoint step; 0 = the newest.

  Returns:
    (variables, model_cfg, num_classes, step): host NumPy {'params',
    'batch_stats'}, the architecture dict, the online probe's classes.
  """
  pre = results_lib.read_workdir_config(workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, pre.train.keep_checkpoints)
  steps = checkpointer.all_steps()
  if not steps:
    raise config_lib.ConfigError(
        f"config.init.checkpoint_dir={workdir!r} is invalid: it holds no "
        "checkpoint")
  step = step or max(steps)
  if step not in steps:
    config_lib.fail("init.checkpoint_step", step,
                    f"the workdir holds steps {steps}")
  shapes = checkpointer.item_shapes(step)
  num_classes = int(shapes.get(_PROBE_BIAS, (0,))[0])
  model_cfg = model_config(pre)
  model = build_model(model_cfg, num_classes=num_classes)
  tx = optim.make_optimizer(pre.optim, optax.constant_schedule(0.0))

  def abstract_state():
    variables = model.init(jax.random.PRNGKey(0),
                           jnp.zeros((1, pre.data.image_size,
                                      pre.data.image_size, 3)), train=False)
    return state_lib.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]))

  sharding = NamedSharding(parallel.make_mesh(), P())
  target = jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      jax.eval_shape(abstract_state))
  state = checkpointer.restore(step, target)
  checkpointer.close()
  return parallel.to_host(state.variables), model_cfg, num_classes, int(step)


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
  ckpt_lib.check_shapes(variables, dict(expected_variables(model, 32)),
                        f"export {path}")


def load_export_model(path: str, field: str = "init.export",
                      axis_name: Any = None
                      ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """An export's inference model, checked host variables and meta.

  Args:
    path: the export directory.
    field: the config field or flag that named it, for error messages.
    axis_name: BatchNorm axis of the returned model (None: inference only).

  Returns:
    (model with its classifier head, variables, meta.json).
  """
  if not os.path.isdir(path):
    raise config_lib.ConfigError(
        f"config.{field}={path!r} is invalid: no such directory (an export "
        "with meta.json is required)")
  variables, meta = export_lib.load_export(path)
  num_classes = int(meta["num_classes"])
  check_export(variables, meta["model"], num_classes, path)
  model = build_model(meta["model"], num_classes=num_classes,
                      axis_name=axis_name)
  return model, _host(variables), meta


def load_teacher(config: ml_collections.ConfigDict
                 ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """Loads and checks the teacher export `config.distill.teacher_export`.

  Returns:
    (teacher_model, variables, meta): the inference-mode model, its host
    variables and the export's meta.json.

  Raises:
    ConfigError: if the path is not an export, has no classifier head or was
      trained at another image size.
  """
  path = config.distill.teacher_export
  # Inference mode only: BatchNorm uses the stored moving averages, so the
  # teacher needs no axis name and is identical on every replica.
  model, variables, meta = load_export_model(path, "distill.teacher_export")
  if int(meta["num_classes"]) < 1:
    config_lib.fail("distill.teacher_export", path, "the export has no "
                    "classifier head (num_classes=0); export a fine-tuned or "
                    "probe-trained model")
  if int(meta["image_size"]) != config.data.image_size:
    config_lib.fail("data.image_size", config.data.image_size,
                    f"the teacher {path!r} was trained at "
                    f"{meta['image_size']} px; use the same size")
  return model, variables, meta


SOURCES = ("export", "checkpoint_dir", "random")  # the fields of `init`


def check_one_source(config: ml_collections.ConfigDict, mode: str) -> None:
  """`config.init` must name exactly one encoder to start from."""
  sources = [k for k in SOURCES if config.init[k]]
  if len(sources) != 1:
    config_lib.fail(
        "init", {k: config.init[k] for k in SOURCES},
        f"mode={mode!r} needs exactly one encoder to start from: "
        "init.export (an export directory), init.checkpoint_dir (a "
        "pretraining workdir) or init.random=True")


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
    _, variables, meta = load_export_model(init.export)
    model_cfg = meta["model"]
    if int(meta["image_size"]) != config.data.image_size:
      config_lib.fail("data.image_size", config.data.image_size,
                      f"the export {init.export!r} was made at "
                      f"{meta['image_size']} px with the "
                      f"{model_cfg.get('stem')} stem; evaluate it at "
                      f"--config.data.image_size={meta['image_size']}")
    source = {"kind": "export", "path": os.path.abspath(init.export),
              "step": meta.get("extra", {}).get("step")}
  elif init.checkpoint_dir:
    variables, model_cfg, _, step = load_checkpoint(
        init.checkpoint_dir, int(init.checkpoint_step))
    source = {"kind": "checkpoint", "step": step,
              "path": os.path.abspath(init.checkpoint_dir)}
  elif init.random:
    model_cfg = model_config(config)
    model = build_model(model_cfg, num_classes=0)
    variables = state_lib.init_variables(model, config.data.image_size,
                                         config.seed)
    source = {"kind": "random", "seed": int(config.seed), "step": 0}
  else:
    raise config_lib.ConfigError(
        "config.init names no encoder: set init.export, init.checkpoint_dir "
        "or init.random")
  return _host(variables), dict(model_cfg), source


def _host(variables: Any) -> Dict[str, Any]:
  """NumPy leaves, and an empty 'batch_stats' when the model has none."""
  variables = jax.tree.map(np.asarray, dict(variables))
  variables.setdefault("batch_stats", {})
  return variables
