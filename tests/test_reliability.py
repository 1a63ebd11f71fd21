"""Deterministic resume, SIGTERM, the NaN guard, start_over and bad configs.

In-process runs of `pretrain.run` on `configs/digits.py:tiny` (8 CPU
devices). The reference is always an uninterrupted run of the same config,
so resuming must reproduce it exactly, not approximately.
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import eval_helpers
from configs import digits
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax.engine import preemption
from simclr_jax.engine import writer as writer_lib
from simclr_jax import modes
from simclr_jax.modes import pretrain

STEPS = 20


class _SignalAt(preemption.PreemptionGuard):
  """The real handlers, plus a real SIGTERM sent to this process at `step`."""

  def __init__(self, step, signum=signal.SIGTERM):
    super().__init__()
    self._at, self._signum = step, signum

  def should_stop(self, step, sync):
    if step == self._at:
      os.kill(os.getpid(), self._signum)
    return super().should_stop(step, sync)


def _config(steps=STEPS, **train):
  config = digits.get_config("tiny")
  config.train.steps = steps
  config.train.probe = False
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 1000  # only the last step (and stops)
  for key, value in train.items():
    config.train[key] = value
  return config


def _run(config, workdir, monkeypatch, guard=None):
  recorder = eval_helpers.Recorder()
  monkeypatch.setattr(writer_lib, "Writer", lambda _: recorder)
  pretrain.run(config, str(workdir), guard=guard)
  return recorder.scalars


def _steps(workdir):
  return ckpt_lib.Checkpointer(str(workdir), 10).all_steps()


def _load(workdir, step):
  """A checkpoint's arrays as stored (no target), as NumPy."""
  path = os.path.join(str(workdir), ckpt_lib.CHECKPOINT_SUBDIR, str(step),
                      "default")
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.restore(path)
  return jax.tree.map(np.asarray, tree)


def _digest(directory):
  """sha256 of every file below `directory`, but the run's lock file."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      if name == ".lock":  # the lock of the run that refused: no data
        continue
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 20-step run: (workdir, {step: scalars})."""
  workdir = tmp_path_factory.mktemp("reference")
  with pytest.MonkeyPatch.context() as mp:
    scalars = _run(_config(), workdir, mp)
  return workdir, scalars


def test_sigterm_then_resume_equals_uninterrupted(reference, tmp_path,
                                                  monkeypatch):
  ref_dir, ref = reference
  assert sorted(ref) == list(range(1, STEPS + 1))
  workdir = tmp_path / "split"
  recorder = eval_helpers.Recorder()
  monkeypatch.setattr(writer_lib, "Writer", lambda _: recorder)
  with pytest.raises(preemption.Preempted) as stopped:
    pretrain.run(_config(), str(workdir), guard=_SignalAt(10))
  assert stopped.value.step == 10 and stopped.value.reason == "SIGTERM"
  assert _steps(workdir) == [10]  # saved at the step in flight, no later
  # The handlers are gone again once run() returns.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  first = recorder.scalars
  second = _run(_config(), workdir, monkeypatch)
  assert sorted(first) == list(range(1, 11))
  assert sorted(second) == list(range(11, STEPS + 1))
  for step in range(1, STEPS + 1):
    got = (first if step <= 10 else second)[step]
    for key in ("loss", "grad_norm", "contrast_acc_all_columns"):
      np.testing.assert_allclose(got[key], ref[step][key], rtol=0, atol=1e-6,
                                 err_msg=f"{key} at step {step}")
  assert _steps(workdir) == [10, STEPS]
  ours, theirs = _load(workdir, STEPS), _load(ref_dir, STEPS)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.quick
def test_guard_turns_signals_into_a_flag():
  previous = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionGuard() as guard:
    assert guard.should_stop(1, sync=True) is None
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.should_stop(2, sync=False) == "SIGINT"
  assert signal.getsignal(signal.SIGINT) is previous


_TWO_SIGNALS = """
import os, signal, sys
from simclr_jax.engine import preemption
with preemption.PreemptionGuard() as guard:
  os.kill(os.getpid(), getattr(signal, sys.argv[1]))
  print("first:", guard.should_stop(1, sync=False), flush=True)
  os.kill(os.getpid(), getattr(signal, sys.argv[2]))
  print("not reached", flush=True)
"""


@pytest.mark.parametrize("first,second", [("SIGINT", "SIGINT"),
                                          ("SIGTERM", "SIGINT"),
                                          ("SIGINT", "SIGTERM")])
def test_a_second_signal_ends_the_process_at_once_in_one_line(first, second):
  proc = subprocess.run([sys.executable, "-c", _TWO_SIGNALS, first, second],
                        capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 128 + getattr(signal, second), proc.stderr
  assert proc.stdout.splitlines() == [f"first: {first}"]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: second {second}:")
  assert "Traceback" not in proc.stderr and "not reached" not in proc.stdout


def test_nan_names_the_step_and_keeps_earlier_checkpoints(
    reference, tmp_path, monkeypatch):
  ref_dir, _ = reference
  ckpt_dir = tmp_path / ckpt_lib.CHECKPOINT_SUBDIR
  shutil.copytree(os.path.join(ref_dir, ckpt_lib.CHECKPOINT_SUBDIR), ckpt_dir)
  before = _digest(ckpt_dir)
  config = _config(steps=STEPS + 6, checkpoint_every_steps=1)
  config.optim.base_lr = 1e30  # planted divergence
  recorder = eval_helpers.Recorder()
  monkeypatch.setattr(writer_lib, "Writer", lambda _: recorder)
  with pytest.raises(preemption.NonFiniteError) as err:
    pretrain.run(config, str(tmp_path))
  message = str(err.value)
  bad_step = int(message.split(" at step ")[1].split(";")[0].split(" ")[0])
  assert STEPS < bad_step <= STEPS + 6, message
  assert "non-finite loss" in message or "non-finite grad_norm" in message
  # Logged steps before the bad one were finite; the bad one was not logged.
  assert all(np.isfinite(recorder.scalars[s]["loss"])
             for s in range(STEPS + 1, bad_step))
  assert bad_step not in recorder.scalars
  saved = _steps(tmp_path)
  assert max(saved) < bad_step
  assert f"last good checkpoint (step {max(saved)}) is kept" in message
  now = _digest(ckpt_dir)
  assert {k: now[k] for k in before if k in now} == {
      k: before[k] for k in before if k in now}
  for step in saved:  # nothing non-finite on disk
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(
        _load(tmp_path, step)) if np.issubdtype(x.dtype, np.inexact))


def test_checkpoint_of_another_model_is_refused(reference, tmp_path,
                                                monkeypatch):
  ref_dir, _ = reference
  shutil.copytree(os.path.join(ref_dir, ckpt_lib.CHECKPOINT_SUBDIR),
                  tmp_path / ckpt_lib.CHECKPOINT_SUBDIR)
  before = _digest(tmp_path)
  config = _config(steps=1)
  config.model.base_widths = (8, 24)
  with pytest.raises(ValueError) as err:
    _run(config, tmp_path, monkeypatch)
  message = str(err.value)
  assert "config.train.start_over=True" in message
  # Leaves are listed in path order (batch statistics and optimizer state
  # first, params after), each with its stored and expected shape.
  assert re.search(r"shape mismatch at \S*encoder/stage1_block0/\S+: "
                   r"stored \(16,\), model expects \(24,\)", message), message
  assert _digest(tmp_path) == before  # refused: nothing touched


def test_start_over_moves_another_model_aside(reference, tmp_path):
  ref_dir, _ = reference
  src = os.path.join(ref_dir, ckpt_lib.CHECKPOINT_SUBDIR)
  shutil.copytree(src, tmp_path / ckpt_lib.CHECKPOINT_SUBDIR)
  stored = _load(ref_dir, STEPS)
  # Same model: resumed even with start_over (a requeued job keeps progress).
  ckpt, start, _ = ckpt_lib.resume(str(tmp_path), 3, stored, True)
  ckpt.close()
  assert start == STEPS
  other = jax.tree.map(lambda x: np.zeros(x.shape + (2,), x.dtype), stored)
  with pytest.raises(ValueError, match="start_over=True"):
    ckpt_lib.resume(str(tmp_path), 3, other, False)
  ckpt, start, _ = ckpt_lib.resume(str(tmp_path), 3, other, True)
  assert start == 0 and ckpt.all_steps() == []
  ckpt.close()
  aside = [d for d in os.listdir(tmp_path) if ".replaced-" in d]
  assert len(aside) == 1 and _digest(tmp_path / aside[0]) == _digest(src)


def _set(config, field, value):
  section, _, key = field.rpartition(".")
  node = config
  for part in section.split(".") if section else ():
    node = node[part]
  node[key] = value


@pytest.mark.quick
@pytest.mark.parametrize("field,value,needle", [
    ("mode", "pretrian", "config.mode='pretrian'"),
    ("data.source", "imagenet", "config.data.source='imagenet'"),
    ("model.depth", 20, "config.model.depth=20"),
    ("optim.name", "adagrad", "config.optim.name='adagrad'"),
    ("loss.name", "infonce", "config.loss.name='infonce'"),
    ("loss.temperature", 0.0, "config.loss.temperature=0.0 is invalid: "
     "must be > 0"),
    ("loss.temperature", -0.1, "config.loss.temperature=-0.1"),
    ("data.image_size", 7, "config.data.image_size=7 is invalid: the cifar "
     "stem downsamples by 8"),
    ("train.global_batch", 36, "config.train.global_batch=36 is invalid: "
     "must be divisible by the number of devices (8)"),
])
def test_bad_config_messages(field, value, needle):
  config = _config()
  _set(config, field, value)
  with pytest.raises(ValueError) as err:
    # The shared checks, the model's and the mode's (an unknown mode too).
    modes.validate(config, num_devices=8)
  assert needle in str(err.value)


@pytest.mark.quick
@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_label_fraction_outside_unit_interval(value):
  config = _config()
  config.data.label_fraction = 0.1
  config_lib.validate(config, num_devices=8)  # inside (0, 1]: fine
  config.data.label_fraction = 1
  config_lib.validate(config, num_devices=8)
  config.data.label_fraction = value
  with pytest.raises(ValueError, match=r"config\.data\.label_fraction=.* is "
                     r"invalid: a fraction of the labels in \(0, 1\]"):
    config_lib.validate(config, num_devices=8)


@pytest.mark.quick
@pytest.mark.parametrize("mode", ["linear_eval", "finetune"])
def test_modes_from_an_encoder_need_a_start(mode):
  config = _config()
  config.mode = mode
  config.eval.evaluators = ("auto",)  # the mode's own
  with pytest.raises(ValueError, match=rf"config\.init=.* is invalid: "
                     rf"mode='{mode}' needs exactly one encoder"):
    modes.validate(config, num_devices=8)
  config.init.export = "/some/export"
  modes.validate(config, num_devices=8)
  config.init.export, config.init.checkpoint_dir = "", "/some/workdir"
  modes.validate(config, num_devices=8)
  config.init.export = "/some/export"  # two sources: ambiguous
  with pytest.raises(ValueError, match="exactly one encoder"):
    modes.validate(config, num_devices=8)


@pytest.mark.quick
def test_finite_checks_name_the_quantity():
  history = [(7, {"loss": np.float32(1.0), "grad_norm": np.float32(2.0)}),
             (8, {"loss": np.float32(1.5), "grad_norm": np.float32(np.inf)}),
             (9, {"loss": np.float32(np.nan), "grad_norm": np.float32(1.0)})]
  with pytest.raises(preemption.NonFiniteError,
                     match=r"non-finite grad_norm=inf at step 8;.*step 6"):
    preemption.check_finite_metrics(history, last_good=6)
  preemption.check_finite_metrics(history[:1])
  tree = {"a": np.ones(3, np.float32), "b": {"c": np.array([1.0, np.nan])},
          "n": np.array([1, 2], np.int32)}
  with pytest.raises(preemption.NonFiniteError,
                     match=r"train state at step 5 \(b/c\)"):
    preemption.check_finite_tree(tree, 5)
  tree["b"]["c"][1] = 0.0
  preemption.check_finite_tree(tree, 5)


_INTERRUPTED_COMMAND = """
from simclr_jax.engine import logs
def main(argv):
  raise KeyboardInterrupt  # what Ctrl-C raises outside a training loop
logs.run_app(main)
"""


def test_ctrl_c_outside_a_training_loop_is_one_line():
  proc = subprocess.run([sys.executable, "-c", _INTERRUPTED_COMMAND],
                        capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(__file__)))
  assert proc.returncode == 128 + signal.SIGINT, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == ["error: interrupted (SIGINT); outputs and checkpoints "
                    "written before it are intact"]
  assert "Traceback" not in proc.stderr


@pytest.mark.quick
def test_small_replicated_arrays_are_saved_whole_without_compiling(
    tmp_path, caplog):
  # orbax's replica-parallel save cuts every replicated array into one slice
  # per device with a program compiled per shape (7-9 s at the first save of
  # the tiny model); below REPLICA_SLICE_MIN_BYTES per slice it must not.
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  # Shapes no other test uses, so no compiled program is cached already.
  host = {f"w{i}": rng.normal(size=(3, 5 + i, 7)).astype(np.float32)
          for i in range(6)}
  host["step"] = np.asarray(11, np.int32)
  state = parallel.replicate(mesh, host)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    checkpointer.save(11, state)
    checkpointer.wait()
  compiled = [r.getMessage() for r in caplog.records
              if "Compiling" in r.getMessage()]
  assert not compiled, compiled[:3]
  restored = checkpointer.restore(11, state)
  checkpointer.close()
  for key, value in host.items():
    np.testing.assert_array_equal(np.asarray(restored[key]), value)
