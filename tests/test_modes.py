"""The mode registry: a new mode is one class and one registry line."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from simclr_jax import modes
from simclr_jax.engine import loop
from simclr_jax.engine import resolve
from simclr_jax.evals import base as evals_base


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# main with one more line in the registry, in its own interpreter (other
# modules define the same --config flag).
_MAIN_WITH_TOY = """
from simclr_jax.engine import logs
logs.quiet_native_logs()
from simclr_jax import main, modes
import test_modes
modes.MODES["toy"] = test_modes.Toy()  # the one registry line
logs.run_app(main.main)
"""


class _Report(evals_base.Evaluator):
  """An evaluator that reports what its mode was built with."""

  name = "report"
  periodic = False

  def __init__(self, **facts):
    self.facts = facts

  def run(self, variables, step, writer=None):
    del variables, writer
    return dict(self.facts, step=step)


class Toy(loop.Mode):
  """Trains nothing; lowers eval.knn_k by a rule and reports its config."""

  name = "toy"
  needs_labels = False
  needs_eval_split = False
  evaluators = default_evaluators = ()  # none of the registry's

  def rules(self):
    return (lambda config, facts: resolve.lower(config, "eval.knn_k", 3),)

  def validate(self, config):
    if config.eval.knn_k > 3:  # the rule ran before validation
      raise AssertionError("validated before the rules ran")

  def build(self, config, mesh, workdir):
    del mesh, workdir
    frozen = isinstance(config, ml_collections.FrozenConfigDict)
    return loop.EvalJob(
        evaluators=[_Report(frozen=frozen, knn_k=config.eval.knn_k)],
        variables=lambda: None)


def test_a_registered_mode_runs_through_main(tmp_path):
  workdir = str(tmp_path / "run")
  config_file = tmp_path / "toy.py"
  config_file.write_text(
      "from configs import digits\n\n\ndef get_config():\n"
      "  config = digits.get_config('tiny')\n  config.mode = 'toy'\n"
      "  config.eval.evaluators = ('auto',)\n"
      "  return config\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO, os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")
  proc = subprocess.run(
      [sys.executable, "-c", _MAIN_WITH_TOY, f"--config={config_file}",
       f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resolved: eval.knn_k 20 -> 3" in proc.stderr
  with open(os.path.join(workdir, "toy_results.json")) as f:
    results = json.load(f)
  assert results["report"] == {"frozen": True, "knn_k": 3, "step": 0}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["eval"]["knn_k"] == 3  # the resolved config


def test_an_unknown_mode_is_one_config_error():
  with pytest.raises(ValueError, match="config.mode='nope' is invalid"):
    modes.get("nope")


def test_every_mode_names_evaluators_of_the_one_vocabulary():
  from simclr_jax.evals import registry  # pylint: disable=g-import-not-at-top
  for mode in modes.MODES.values():
    assert set(mode.default_evaluators) <= set(mode.evaluators), mode.name
    assert set(mode.evaluators) <= set(registry.NAMES), mode.name


@pytest.mark.parametrize("field,value", [
    ("eval.knn", False), ("eval.protocols", ("linear",)),
    ("viz.enabled", False), ("distill.eval_teacher", True)])
def test_a_replaced_field_is_one_line_naming_eval_evaluators(field, value):
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError) as e:
    modes.validate(config)
  assert str(e.value).startswith(f"config.{field}=")
  assert "replaced by eval.evaluators" in str(e.value)
  assert "\n" not in str(e.value)


def test_each_evaluator_is_given_only_the_sections_it_declares():
  # pylint: disable=g-import-not-at-top
  from configs import digits
  from simclr_jax import parallel
  from simclr_jax.evals import features as features_lib
  from simclr_jax.evals import registry
  from simclr_jax.models import build_model
  from simclr_jax.models import model_config
  config = digits.get_config("tiny")
  config.eval.evaluators = registry.NAMES
  config = ml_collections.FrozenConfigDict(config)
  model = build_model(model_config(config), num_classes=10)
  ctx = registry.Context(config, parallel.make_mesh(), "unused", 10,
                         model=model, feature_fn=lambda v, x: x,
                         teacher=(model, None))
  built = registry.build(ctx)
  assert [e.name for e in built] == ["classifier", "teacher", "knn",
                                     "linear_probe", "heldout", "pictures"]
  for evaluator in built:
    given = evaluator._config  # pylint: disable=protected-access
    assert isinstance(given, ml_collections.FrozenConfigDict)
    assert set(given.keys()) == set(type(evaluator).sections), evaluator.name
    for section in given.keys():  # the same values as the whole config
      assert given[section] == config[section]
  shared = ctx.features()._config  # pylint: disable=protected-access
  assert set(shared.keys()) == set(features_lib.SplitFeatures.sections)
  # What is not declared cannot be read.
  with pytest.raises(AttributeError):
    built[2]._config.data  # pylint: disable=pointless-statement,protected-access


def test_a_slice_names_a_missing_section():
  from simclr_jax.evals import registry  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"eval": {"k": 1}, "seed": 3})
  assert registry.sliced(config, ("seed",)).to_dict() == {"seed": 3}
  with pytest.raises(KeyError, match="no section \\['viz'\\]"):
    registry.sliced(config, ("eval", "viz"))
