"""The library without TensorFlow, TFDS and clu: import graph and a real run.

`tf_free_worker.py` runs in a fresh interpreter with the three packages
blocked from import (as on a JAX-only GPU machine): pretraining on the
synthetic source, checkpoint resume, export, embedding through the encoder
API (`simclr_jax.load_encoder`) and linear evaluation (see its `STEPS`). Here it runs on the 8 forced CPU devices, bounded in time and
killed on overrun.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "tf_free_worker.py")
TIMEOUT_S = 600  # two tiny pretraining runs on a shared 2-core host

# The tf.data modules and the augmentation preview: the only modules of the
# package that import TensorFlow when they are imported. Every other module
# must import where it is not installed.
TF_MODULES = {
    "simclr_jax.data.tf_host", "simclr_jax.data.sources",
    "simclr_jax.data.pipeline", "simclr_jax.data.augment",
    "simclr_jax.data.photometric", "simclr_jax.data.fast",
    "simclr_jax.data.folders",
    "simclr_jax.data.preview", "simclr_jax.tools.preview"}
# Modules that define the same absl flags (--config): one interpreter each.
FLAG_MODULES = ("simclr_jax.main", "simclr_jax.tools.device_check")


def _package_modules():
  """Names of every module of the package, from its files."""
  out = []
  for root, _, files in os.walk(os.path.join(REPO, "simclr_jax")):
    for name in sorted(files):
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name), REPO)[:-3]
        mod = rel.replace(os.sep, ".")
        out.append(mod[:-len(".__init__")] if mod.endswith(".__init__")
                   else mod)
  return sorted(out)


def _env():
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                if p]))
  env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def _run(args, timeout):
  """Runs a Python child; kills it (and fails) past `timeout` seconds."""
  proc = subprocess.Popen([sys.executable] + args, env=_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"timed out after {timeout} s:\n{out[-3000:]}")
  return proc.returncode, out


def _import_blocked(modules):
  code = ("import sys; sys.path.insert(0, 'tests'); import tf_blocker; "
          "tf_blocker.install(); import importlib\n"
          f"for m in {tuple(modules)!r}: importlib.import_module(m)\n"
          "print('LOADED', tf_blocker.loaded())")
  rc, out = _run(["-c", code], timeout=180)
  assert rc == 0, out[-3000:]
  assert "LOADED []" in out, out[-3000:]


# The PyTorch module written beside --format=torch weights: a file for the
# user's torch environment (it imports torch), not a module the library runs.
TORCH_TEMPLATE = "simclr_jax.exports.simclr_jax_resnet"


@pytest.mark.quick
def test_library_modules_import_without_tensorflow():
  modules = [m for m in _package_modules()
             if m not in TF_MODULES and m not in FLAG_MODULES
             and m != TORCH_TEMPLATE]
  assert len(modules) > 40 and "simclr_jax.modes.pretrain" in modules
  _import_blocked(modules)


@pytest.mark.parametrize("module", FLAG_MODULES)
def test_commands_import_without_tensorflow(module):
  _import_blocked([module])


@pytest.mark.quick
def test_blocker_acts_like_a_missing_package():
  code = ("import sys; sys.path.insert(0, 'tests'); import tf_blocker; "
          "tf_blocker.install(); import importlib.util\n"
          "assert importlib.util.find_spec('tensorflow') is None\n"
          "try:\n  import clu\nexcept ModuleNotFoundError as e:\n"
          "  print('REFUSED', e.name)\n"
          "import numpy; print('NUMPY', numpy.__name__)")
  rc, out = _run(["-c", code], timeout=60)
  assert rc == 0 and "REFUSED clu" in out and "NUMPY numpy" in out, out


def test_pretrain_resume_export_without_tensorflow(tmp_path):
  rc, out = _run([WORKER, str(tmp_path)], timeout=TIMEOUT_S)
  with open(tmp_path / "report.json") as f:
    report = json.load(f)
  assert rc == 0, out[-5000:]
  assert report["passed"] == ["pretrain", "resume", "export", "embed",
                              "linear_eval"], report
  assert report["blocked_loaded"] == []
  if _env()["JAX_PLATFORMS"] == "cpu":
    assert report["platform"] == "cpu" and len(report["devices"]) == 8
  else:  # the device check's GPU pass (JAX_PLATFORMS=cuda)
    assert report["platform"] == "gpu", report


def test_data_package_loads_tensorflow_only_for_a_tf_data_module():
  code = ("import sys; sys.path.insert(0, 'tests'); import tf_blocker; "
          "tf_blocker.install()\n"
          "from simclr_jax import data\n"
          "print('SYNTHETIC', data.synthetic.__name__)\n"
          "print('SUBSET', "
          "data.class_balanced_subset([0, 0, 1], 1.0, 0).tolist())\n"
          "try:\n  data.sources\nexcept ModuleNotFoundError as e:\n"
          "  print('SOURCES NEEDS', e.name)\n"
          "try:\n  data.preprocess_eval\nexcept ModuleNotFoundError as e:\n"
          "  print('PREPROCESS NEEDS', e.name)\n")
  rc, out = _run(["-c", code], timeout=60)
  assert rc == 0, out[-3000:]
  for line in ("SYNTHETIC simclr_jax.data.synthetic", "SUBSET [0, 1, 2]",
               "SOURCES NEEDS tensorflow", "PREPROCESS NEEDS tensorflow"):
    assert line in out, out[-3000:]
