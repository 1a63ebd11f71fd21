"""The mode registry: a new mode is one class and one registry line."""

import json
import os

import ml_collections
import pytest
from absl import flags

from simclr_jax import modes
from simclr_jax.engine import loop
from simclr_jax.engine import resolve
from simclr_jax.evals import base as evals_base


class _Count(evals_base.Evaluator):
  """An evaluator that counts the examples of the train split it was told."""

  name = "count"
  periodic = False

  def __init__(self, num_train: int):
    self.num_train = num_train

  def run(self, variables, step, writer=None):
    del variables, writer
    return {"num_examples": self.num_train, "step": step}


class Toy(loop.Mode):
  """Evaluates nothing but the data's size; lowers eval.knn_k by a rule."""

  name = "toy"
  needs_labels = False
  needs_eval_split = False
  built_with = None

  def rules(self):
    return (lambda config, facts: resolve.lower(config, "eval.knn_k", 3),)

  def validate(self, config):
    if config.eval.knn_k > 3:  # the rule ran before validation
      raise AssertionError("validated before the rules ran")

  def build(self, config, mesh, workdir):
    del mesh, workdir
    Toy.built_with = config
    return loop.EvalJob(evaluators=[_Count(1437)], variables=lambda: None)


def test_a_registered_mode_runs_through_main(tmp_path, monkeypatch, capsys):
  from simclr_jax import main  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(modes.MODES, "toy", Toy())  # the one registry line
  workdir = str(tmp_path / "run")
  config_file = tmp_path / "toy.py"
  config_file.write_text(
      "from configs import digits\n\n\ndef get_config():\n"
      "  config = digits.get_config('tiny')\n  config.mode = 'toy'\n"
      "  return config\n")
  fv = flags.FLAGS
  fv(["main", f"--config={config_file}", f"--workdir={workdir}"])
  try:
    main.main(["main"])
  finally:
    fv.unparse_flags()
  assert isinstance(Toy.built_with, ml_collections.FrozenConfigDict)
  assert Toy.built_with.eval.knn_k == 3
  with open(os.path.join(workdir, "toy_results.json")) as f:
    results = json.load(f)
  assert results["count"] == {"num_examples": 1437, "step": 0}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["eval"]["knn_k"] == 3  # the resolved config
  capsys.readouterr()


def test_an_unknown_mode_is_one_config_error():
  with pytest.raises(ValueError, match="config.mode='nope' is invalid"):
    modes.get("nope")
