"""Real processes: SIGTERM exit status and resume, kill -9 during saves.

Every child runs under a deadline and is killed if a test fails.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 400  # per child process

# A stand-in training loop that only checkpoints: every leaf of checkpoint k
# holds the value k, so a restored checkpoint proves which step it is.
_SAVER = """
import sys
import jax.numpy as jnp
from simclr_jax.engine import checkpoint as ckpt_lib
ckpt = ckpt_lib.Checkpointer(sys.argv[1], keep=2)
step = (ckpt.latest_step() or 0) + 1
print("start", step, flush=True)
while True:
  state = {"w": jnp.full((512, 1024), step, jnp.float32),
           "b": {"c": jnp.full((1024,), step, jnp.float32)}}
  ckpt.save(step, state)
  print("saving", step, flush=True)
  step += 1
"""


def _env(devices=2):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _spawn(args, log_path):
  log = open(log_path, "w")
  proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=_env(),
                          stdout=log, stderr=subprocess.STDOUT)
  log.close()
  return proc


def _wait_for(proc, log_path, needle, deadline):
  """Polls the child's log until `needle` appears; fails if it exits first."""
  while time.time() < deadline:
    with open(log_path) as f:
      text = f.read()
    if needle in text:
      return text
    if proc.poll() is not None:
      raise AssertionError(f"exited {proc.returncode} before {needle!r}:\n"
                           f"{text[-4000:]}")
    time.sleep(0.01)
  raise AssertionError(f"no {needle!r} within the deadline")


def _partial(ckpt_dir):
  """Step directories an interrupted save left behind (not yet committed)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return [d for d in os.listdir(ckpt_dir) if not d.isdigit()]


@pytest.fixture()
def children():
  procs = []
  yield procs
  for proc in procs:  # never leave a child behind, whatever happened
    if proc.poll() is None:
      proc.kill()
      proc.wait()


def test_kill9_during_saves_leaves_latest_checkpoint_readable(tmp_path,
                                                              children):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR)
  delays = (0.0, 0.05, 0.13, 0.3, 0.55, 0.8)  # after the second save starts
  mid_save_kills, previous = 0, 0
  for attempt, delay in enumerate(delays):
    log_path = str(tmp_path / f"saver{attempt}.log")
    proc = _spawn(["-c", _SAVER, workdir], log_path)
    children.append(proc)
    # orbax commits save k before save k + 1 starts: one complete checkpoint.
    text = _wait_for(proc, log_path, f"saving {previous + 2}",
                     time.time() + DEADLINE_S)
    assert f"start {previous + 1}" in text  # resumed after the last complete
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    mid_save_kills += bool(_partial(ckpt_dir))
    # The next run's view: the newest complete checkpoint, fully readable.
    ckpt = ckpt_lib.Checkpointer(workdir, keep=2)
    latest = ckpt.latest_step()
    assert latest is not None and latest > previous, (latest, previous)
    target = {"w": np.zeros((512, 1024), np.float32),
              "b": {"c": np.zeros((1024,), np.float32)}}
    restored = ckpt.restore(latest, target)
    ckpt.close()
    for leaf in jax.tree.leaves(restored):
      np.testing.assert_array_equal(np.asarray(leaf), latest)
    previous = latest
  assert mid_save_kills >= 1, "no kill landed during a save"


def _main_args(workdir, steps):
  return ["-m", "simclr_jax.main", "--config=configs/digits.py:tiny",
          f"--workdir={workdir}", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every_steps=1",
          "--config.train.log_every_steps=1", "--config.train.probe=False"]


def test_sigterm_exit_status_then_kill9_mid_save_then_finish(tmp_path,
                                                             children):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR)
  total = 500  # far more than runs before the signals

  # 1. SIGTERM once a few checkpoints exist: save at that step, exit 75.
  log1 = str(tmp_path / "run1.log")
  proc = _spawn(_main_args(workdir, total), log1)
  children.append(proc)
  _wait_for(proc, log1, "Saving checkpoint at step 3", time.time() + DEADLINE_S)
  proc.send_signal(signal.SIGTERM)
  rc = proc.wait(timeout=120)
  text = open(log1).read()
  assert rc == preemption.PREEMPTED_EXIT_CODE, text[-4000:]
  stopped = int(text.split("preempted (SIGTERM) at step ")[1].split(";")[0])
  assert stopped >= 3
  assert ckpt_lib.Checkpointer(workdir, 3).latest_step() == stopped

  # 2. Resume, then kill -9 the moment a save is under way.
  log2 = str(tmp_path / "run2.log")
  proc = _spawn(_main_args(workdir, total), log2)
  children.append(proc)
  _wait_for(proc, log2, f"Resuming from checkpoint at step {stopped}",
            time.time() + DEADLINE_S)
  deadline = time.time() + DEADLINE_S
  while not _partial(ckpt_dir) and time.time() < deadline:
    assert proc.poll() is None, open(log2).read()[-4000:]
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  killed_mid_save = bool(_partial(ckpt_dir))
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  latest = steps[-1]
  assert latest >= stopped

  # 3. The next run resumes from the newest complete checkpoint and finishes.
  log3 = str(tmp_path / "run3.log")
  proc = _spawn(_main_args(workdir, latest + 2) +
                ["--config.train.allow_config_change=True"], log3)
  children.append(proc)
  rc = proc.wait(timeout=DEADLINE_S)
  text = open(log3).read()
  assert rc == 0, text[-4000:]
  assert f"Resuming from checkpoint at step {latest}" in text
  assert ckpt_lib.Checkpointer(workdir, 3).latest_step() == latest + 2
  with open(os.path.join(workdir, "pretrain_results.json")) as f:
    assert json.load(f)["step"] == latest + 2  # the extended run's end
  assert not _partial(ckpt_dir)
  assert killed_mid_save  # the kill hit a save in flight


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_signal_during_the_save_exits_in_one_line(tmp_path, children,
                                                           second):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR)
  log1 = str(tmp_path / "run1.log")
  proc = _spawn(_main_args(workdir, 500), log1)
  children.append(proc)
  _wait_for(proc, log1, "Saving checkpoint at step 3", time.time() + DEADLINE_S)
  proc.send_signal(signal.SIGTERM)
  _wait_for(proc, log1, "Received SIGTERM", time.time() + 120)
  proc.send_signal(getattr(signal, second))  # while the stop's save commits
  rc = proc.wait(timeout=120)
  text = open(log1).read()
  assert rc == 128 + getattr(signal, second), text[-4000:]
  errors = [l for l in text.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith(f"error: second {second}")
  assert "Traceback" not in text and "Finalize" not in text, text[-4000:]
  # Every committed checkpoint is complete; the rerun resumes from the newest
  # (once: what the second signal was does not change what is on disk).
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  ckpt = ckpt_lib.Checkpointer(workdir, 3)
  for step in steps:
    assert ckpt.item_shapes(step)
  ckpt.close()
  if second == "SIGINT":
    return
  log2 = str(tmp_path / "run2.log")
  proc = _spawn(_main_args(workdir, steps[-1] + 1) +
                ["--config.train.allow_config_change=True"], log2)
  children.append(proc)
  rc = proc.wait(timeout=DEADLINE_S)
  text = open(log2).read()
  assert rc == 0, text[-4000:]
  assert f"Resuming from checkpoint at step {steps[-1]}" in text
  # The changed field is named, with both values.
  assert f"changed fields: train.steps: 500 -> {steps[-1] + 1}" in text
  assert not _partial(ckpt_dir)


# Two processes of one jax.distributed run; process 1 gets the signal at
# step 20, and both must agree on the step after which they stop.
_TWO_PROCESSES = """
import os, signal, sys, time
import jax
pid, port, signame = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid)
from simclr_jax.engine import preemption
with preemption.PreemptionGuard() as guard:
  for step in range(1, 3000):
    if step == 20 and pid == 1:
      os.kill(os.getpid(), getattr(signal, signame))
    stop = guard.should_stop(step, sync=step % 10 == 0)  # 'log' every 10
    if stop:
      print(f"stop at {step}: {stop}", flush=True)
      break
    time.sleep(0.01)
jax.distributed.shutdown()
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.parametrize("signame,first_step,reason", [
    # Python handler: shared at the next 'log' step (20 is one).
    ("SIGINT", 20, "SIGINT"),
    # JAX's preemption notifier: agreed through the sync point, a few steps on.
    ("SIGTERM", None, "SIGTERM (preemption notice)"),
])
def test_processes_agree_on_the_stop_step(tmp_path, children, signame,
                                          first_step, reason):
  port = str(_free_port())
  logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
  for i in range(2):
    children.append(_spawn(["-c", _TWO_PROCESSES, str(i), port, signame],
                           logs[i]))
  for proc in children:
    assert proc.wait(timeout=DEADLINE_S) == 0
  lines = []
  for log in logs:
    with open(log) as f:
      lines.append([l for l in f.read().splitlines() if l.startswith("stop")])
  steps = [int(l[0].split()[2].rstrip(":")) for l in lines]
  assert steps[0] == steps[1] >= 20, lines
  if first_step is not None:
    assert steps[0] == first_step
  assert lines[1][0].endswith(reason)
