"""What the engine tests share: every mode's tiny config and its sources."""

import eval_helpers
from configs import digits_distill
from configs import digits_finetune
from configs import digits_linear
from simclr_jax.engine import state as state_lib
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config

STEPS = 6
ALL_MODES = ("pretrain", "linear_eval", "finetune", "distill")
# The evaluator whose result each mode is judged by.
MAIN_RESULT = {"pretrain": "probe", "linear_eval": "linear",
               "finetune": "finetune", "distill": "student"}


def make_sources(root, pretrain_workdir):
  """A pretraining workdir (encoder source) and a teacher export in `root`."""
  config = digits_distill.get_config("tiny")
  model = build_model(model_config(config), num_classes=10)
  variables = state_lib.init_variables(model, 16, seed=7)
  teacher = str(root / "teacher")
  export_lib.save_export(teacher, variables, model_config(config), 10, 16)
  return {"pretrain": pretrain_workdir, "teacher": teacher}


def mode_config(mode, sources, steps=STEPS):
  """A tiny config of `mode`: a checkpoint every 2 steps, a log every step."""
  if mode == "pretrain":  # as conftest's shared `tiny_pretrain_run`
    config = eval_helpers.tiny_run_config()
  elif mode == "linear_eval":
    config = digits_linear.get_config()
    config.init.checkpoint_dir = sources["pretrain"]
    config.eval.evaluators = ("classifier", "knn")
  elif mode == "finetune":
    config = digits_finetune.get_config()
    config.init.checkpoint_dir = sources["pretrain"]
  else:
    config = digits_distill.get_config("tiny")
    config.distill.teacher_export = sources["teacher"]
  return eval_helpers.with_run_settings(config, steps)
