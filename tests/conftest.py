"""Test session set-up: 8 CPU devices and fast compiles, before jax is imported.

Every test sees 8 host devices; single-device references use a 1-device mesh.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Many tests (and the command-line runs they start as subprocesses, which
# inherit this environment) compile the same tiny programs: a persistent XLA
# cache for this session compiles each once. It starts empty and is removed
# at the end, so no result depends on an earlier session.
# The pytest-xdist workers inherit the directory the main process made (the
# two workers compile many of the same programs); only its maker removes it.
_XLA_CACHE = os.environ.get("SIMCLR_JAX_TESTS_XLA_CACHE")
if not _XLA_CACHE:
  _XLA_CACHE = tempfile.mkdtemp(prefix="simclr_jax_tests_xla_cache_")
  os.environ["SIMCLR_JAX_TESTS_XLA_CACHE"] = _XLA_CACHE
  atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
# Compile time dominates the tiny test models on CPU, here and in the
# command-line runs the tests start (no test times anything).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # pylint: disable=g-import-not-at-top

jax.config.update("jax_disable_most_optimizations", True)  # as above

import copy  # pylint: disable=g-import-not-at-top,g-bad-import-order
import hashlib  # pylint: disable=g-import-not-at-top,g-bad-import-order

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order


def _digest(directory):
  """sha256 of every file below `directory`, by relative path."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """`eval_helpers.make_workdir` once per session: (path, host state).

  Shared by the evaluation, export and engine tests, which only read it (a
  test that wrote into it fails the check at the end of the session); its
  config is `eval_helpers.tiny_config()`.
  """
  import eval_helpers  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tiny_workdir") / "run")
  _, host = eval_helpers.make_workdir(path, step=4)
  before = _digest(path)
  yield path, host
  assert _digest(path) == before, "a test changed the shared tiny workdir"


@pytest.fixture(scope="session")
def tiny_export(tiny_workdir, tmp_path_factory):
  """The export of `tiny_workdir` (its step 4): (path, meta); read only."""
  from simclr_jax.tools import export  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp("tiny_export") / "export")
  meta = export.export_workdir(tiny_workdir[0], path)
  before = _digest(path)
  yield path, copy.deepcopy(meta)
  assert _digest(path) == before, "a test changed the shared tiny export"


@pytest.fixture(scope="session")
def sources(tiny_workdir, tmp_path_factory):
  """The engine tests' encoder source (`tiny_workdir`) and a teacher export
  of random weights: {'pretrain': path, 'teacher': path}; read only."""
  import engine_helpers  # pylint: disable=g-import-not-at-top
  out = engine_helpers.make_sources(tmp_path_factory.mktemp("sources"),
                                    tiny_workdir[0])
  before = _digest(out["teacher"])
  yield out
  assert _digest(out["teacher"]) == before, "a test changed the teacher"


@pytest.fixture(scope="session")
def tiny_pretrain_run(tmp_path_factory):
  """A finished 6-step run of `eval_helpers.tiny_run_config()` (checkpoints
  2, 4 and 6): (workdir, results). Shared by the engine and workdir-safety
  tests, which copy it before changing anything (checked at the end)."""
  import eval_helpers  # pylint: disable=g-import-not-at-top
  from simclr_jax.modes import pretrain  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("tiny_pretrain_run"))
  results = pretrain.run(eval_helpers.tiny_run_config(), workdir)
  before = _digest(workdir)
  yield workdir, copy.deepcopy(results)
  assert _digest(workdir) == before, "a test changed the shared pretraining run"


# The files that take longest (two minutes and more of one worker, measured
# with `--durations`), started first: `-n 2 --dist loadfile` hands out whole
# files in collection order, and a long file started last leaves the other
# worker idle at the end.
SLOW_FILES_FIRST = ("test_loop_signals.py", "test_workdir_safety.py",
                    "test_engine.py", "test_preemption_cli.py",
                    "test_multihost.py", "test_embed.py", "test_gpu_check.py",
                    "test_distill.py", "test_cli_errors.py")


def pytest_collection_modifyitems(config, items):
  """Puts the items of `SLOW_FILES_FIRST` first, in that order (stable)."""
  del config
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
