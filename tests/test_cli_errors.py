"""Every command-line input error: one `error:` line, status 2, nothing written.

Each command runs as a real process, so what absl and ml_collections do
while parsing flags (before `main`) is covered too. Every case fails before
jax compiles anything.
"""

import concurrent.futures
import json
import os
import subprocess
import sys

import pytest

import test_preemption_cli as cli

DIGITS = "--config=configs/digits.py:tiny"
LINEAR = "--config=configs/digits_linear.py"

# (command, arguments, words the error line names). In the arguments
# {missing} is a path that does not exist, {out} an output path, {run} a
# folder with a config.json (a workdir without checkpoints) and {images} a
# folder with one image.
CASES = {
    "main-unknown-field": (
        "main", [DIGITS, "--config.optim.learning_rate=0.1", "--workdir={out}"],
        ["--config.optim.learning_rate", "no such field", "optim.base_lr"]),
    "main-misspelt-field": (
        "main", [DIGITS, "--config.train.step=3", "--workdir={out}"],
        ["--config.train.step:", "train.steps"]),
    "main-missing-config-file": (
        "main", ["--config=configs/nope.py", "--workdir={out}"],
        ["--config=", "configs/nope.py", "no such config file"]),
    "main-unknown-variant": (
        "main", ["--config=configs/digits.py:bogus", "--workdir={out}"],
        ["'bogus'", "allowed", "'tiny'"]),
    "main-variant-of-plain-config": (
        "main", ["--config=configs/cifar10.py:tiny", "--workdir={out}"],
        ["configs/cifar10.py", "no variants"]),
    "main-wrong-type": (
        "main", [DIGITS, "--config.train.steps=abc", "--workdir={out}"],
        ["--config.train.steps='abc'", "integer"]),
    "main-wrong-model-value": (
        "main", [DIGITS, "--config.model.stage_sizes=abc", "--workdir={out}"],
        ["model.stage_sizes", "positive integers"]),
    "main-negative-steps": (
        "main", [DIGITS, "--config.train.steps=-1", "--workdir={out}"],
        ["train.steps=-1", ">= 0"]),
    "main-negative-epochs": (
        "main", [DIGITS, "--config.train.steps=0", "--config.train.epochs=-2",
                 "--workdir={out}"],
        ["train.epochs=-2", ">= 0"]),
    "main-missing-flag": (
        "main", [DIGITS], ["--workdir is required"]),
    "main-unknown-flag": (
        "main", [DIGITS, "--worksdir={out}"],
        ["--worksdir", "no such flag", "--workdir"]),
    "main-extra-argument": (
        "main", [DIGITS, "--workdir={out}", "extra"],
        ["unexpected arguments", "extra"]),
    "export-missing-workdir": (
        "export", ["--workdir={missing}", "--out={out}"],
        ["--workdir=", "missing", "no such directory"]),
    "export-negative-step": (
        "export", ["--workdir={run}", "--out={out}", "--step=-1"],
        ["--step=-1", ">= 0"]),
    "export-wrong-type": (
        "export", ["--workdir={run}", "--out={out}", "--step=two"],
        ["--step='two'", "integer"]),
    "evaluate-missing-export": (
        "evaluate", [LINEAR, "--export={missing}"],
        ["--export=", "missing", "no such directory"]),
    "evaluate-unknown-field": (
        "evaluate", [LINEAR, "--export={missing}",
                     "--config.eval.batchsize=8"],
        ["--config.eval.batchsize:", "no such field", "eval.batch_size"]),
    "embed-missing-export": (
        "embed", ["--export={missing}", "--images={images}",
                  "--out={out}.npz"],
        ["--export=", "missing", "no such directory"]),
    "neighbors-missing-embeddings": (
        "neighbors", ["--embeddings={missing}.npz", "--query=0",
                      "--out={out}.png"],
        ["--embeddings=", "missing.npz", "no such file"]),
    "neighbors-zero-k": (
        "neighbors", ["--embeddings={missing}.npz", "--query=0", "--k=0",
                      "--out={out}.png"],
        ["--k=0", ">= 1"]),
    "convert-missing-checkpoint": (
        "convert", ["--tf2_checkpoint={missing}", "--out={out}"],
        ["--tf2_checkpoint=", "missing", "no such file or directory"]),
}


def _tree(directory):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, dirs, files in os.walk(directory)
                for name in dirs + files)


def _run_case(root, command, args):
  """Runs one case in its own folder: (process, files before, files after)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  run = root / "run"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({}))
  images = root / "images"
  images.mkdir()
  Image.new("RGB", (8, 8)).save(images / "one.png")
  before = _tree(root)
  paths = {"missing": str(root / "missing"), "out": str(root / "out"),
           "run": str(run), "images": str(images)}
  argv = [a.format(**paths) for a in args]
  proc = subprocess.run([sys.executable, "-m", f"simclr_jax.{command}",
                         *argv], cwd=cli.REPO, env=cli._env(),
                        capture_output=True, text=True, timeout=300)
  return proc, before, _tree(root)


@pytest.fixture(scope="module")
def case_runs(tmp_path_factory):
  """{case: _run_case(...)}: the independent processes, a few at a time
  (most of each is Python start-up, which a second core halves)."""
  root = tmp_path_factory.mktemp("cases")
  with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
    futures = {name: pool.submit(_run_case, root / name, command, args)
               for name, (command, args, _) in CASES.items()}
    return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_input_error_is_one_line_and_status_2(case_runs, name):
  proc, before, after = case_runs[name]
  names = CASES[name][2]
  output = proc.stdout + proc.stderr
  assert proc.returncode == 2, output
  assert "Traceback" not in output, output
  errors = [l for l in output.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, output
  for word in names:
    assert word in errors[0], (word, errors[0])
  assert after == before  # nothing written, no workdir made


# ------------------------------------------------ in process (no start-up) ---


def _flags(argv):
  """A fresh FlagValues with --config (reading `argv`) and --workdir."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "workdir", flag_values=fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  return fv


def _parse(argv):
  from simclr_jax.engine import cli_errors  # pylint: disable=g-import-not-at-top
  argv = ["prog", *argv]
  fv = _flags(argv)
  return cli_errors.parse(argv, fv), fv


@pytest.mark.quick
def test_closest_field_knows_synonyms_and_typos():
  from simclr_jax.engine import cli_errors  # pylint: disable=g-import-not-at-top
  fields = ["optim.base_lr", "optim.lr_scaling", "optim.weight_decay",
            "train.steps", "train.global_batch", "eval.batch_size", "mode"]
  assert cli_errors.closest_field("optim.learning_rate", fields) == (
      "optim.base_lr")
  assert cli_errors.closest_field("train.batch_size", fields) == (
      "train.global_batch")
  assert cli_errors.closest_field("train.step", fields) == "train.steps"
  assert cli_errors.closest_field("mdoe", fields) == "mode"
  assert cli_errors.closest_field("xyz.qqq", fields) is None


@pytest.mark.quick
@pytest.mark.parametrize("argv,line", [
    (["--config.optim.learning_rate=0.1"],
     "--config.optim.learning_rate: no such field; did you mean "
     "--config.optim.base_lr?"),
    (["--config.train.steps=abc"],
     "--config.train.steps='abc' is invalid: an integer is required (the "
     "config has 4)"),
    (["--config.aug.blur=maybe"],
     "--config.aug.blur='maybe' is invalid: True or False is required "
     "(the config has False)"),
    (["--config.eval.knn=False"],
     "--config.eval.knn: no such field; replaced by --config.eval.evaluators "
     "(name 'knn' there)"),
], ids=["unknown-field", "wrong-type", "wrong-type-bool", "replaced-field"])
def test_parse_names_the_field(argv, line):
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(config_lib.ConfigError) as e:
    _parse([f"--config={cli.REPO}/configs/digits.py:tiny", "--workdir=w",
            *argv])
  assert str(e.value) == line


@pytest.mark.quick
def test_parse_applies_good_overrides():
  rest, fv = _parse([f"--config={cli.REPO}/configs/digits.py:tiny",
                     "--config.train.steps=7", "--noconfig.aug.flip",
                     "--workdir", "w", "positional"])
  assert rest == ["prog", "positional"]
  assert fv.config.train.steps == 7 and not fv.config.aug.flip
  assert fv.workdir == "w"
