"""The stop signal in every mode: against a device slower than the host,
and through the command line (SIGTERM -> exit 75, kill -9 -> resume); and
config errors as one line before anything compiles."""

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from engine_helpers import ALL_MODES
from engine_helpers import mode_config
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import loop
from simclr_jax.engine import preemption
from simclr_jax.modes import MODES
import test_preemption_cli as cli


class _SlowDevice(loop.Mode):
  """`mode` with a device slower than the host: each step's state also goes
  through a chain of matmuls (value unchanged), and a watcher thread sends
  this process a real SIGTERM once `signal_at` steps have finished on the
  device. The batches are made before the first step, so the host is never
  the slow side. (A host callback cannot make the delay: it makes dispatch
  synchronous on the CPU backend.)"""

  MATMULS, SIZE = 30, 640  # about 0.3 s per step on a 2-core CPU

  def __init__(self, mode, signal_at):
    self.name, self._mode, self._at = mode.name, mode, signal_at
    # The wrapped mode's rules, data needs and evaluators.
    for attr in ("needs_labels", "needs_eval_split", "evaluators",
                 "default_evaluators", "rules", "validate", "check_data"):
      setattr(self, attr, getattr(mode, attr))
    self.outputs = []  # (step, metrics) in dispatch order
    self.running_at_signal = None

  def _watch(self):
    deadline = time.time() + 600
    while len(self.outputs) < self._at and time.time() < deadline:
      time.sleep(0.001)
    jax.block_until_ready(self.outputs[self._at - 1][1])
    self.running_at_signal = self._at + 1
    os.kill(os.getpid(), signal.SIGTERM)

  def build(self, config, mesh, workdir):
    self.config = config  # what the loop hands every mode: frozen
    job = self._mode.build(config, mesh, workdir)

    @jax.jit
    def held(state):
      leaves, tree = jax.tree.flatten(state)
      y = jnp.full((self.SIZE, self.SIZE), 1e-3) + jnp.sum(
          leaves[0]).astype(jnp.float32) * 1e-9
      y = jax.lax.fori_loop(0, self.MATMULS, lambda i, y: jnp.tanh(y @ y), y)
      # 0 * y: XLA keeps float products with 0 (NaN semantics), so the leaf
      # waits for the chain.
      leaves[0] = leaves[0] + (0 * y[0, 0]).astype(leaves[0].dtype)
      return jax.tree.unflatten(tree, leaves)

    def step_fn(state, *args):
      state, metrics = job.step_fn(state, *args)
      state = held(state)
      if not self.outputs:
        jax.block_until_ready(state)  # the compile; then watch the steps
        threading.Thread(target=self._watch, daemon=True).start()
      self.outputs.append((len(self.outputs) + 1, metrics))
      return state, metrics

    def batches(start):
      # Made before the first step, so the host is never the slow side.
      return iter(list(itertools.islice(job.batches(start),
                                        job.total_steps - start)))

    return dataclasses.replace(job, step_fn=step_fn, batches=batches)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_stop_signal_is_acted_on_within_three_steps_of_a_slow_device(
    sources, tmp_path, mode):
  # One log step and one checkpoint at the end of 60 steps: without a bound
  # the host would queue all 60 before it looks at the signal again.
  config = mode_config(mode, sources, steps=60)
  config.train.log_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  slow = _SlowDevice(MODES[mode], signal_at=3)
  workdir = str(tmp_path / mode)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.run(slow, config, workdir)
  running = slow.running_at_signal
  assert running is not None and running >= 4
  assert running <= stopped.value.step <= running + 3, (running,
                                                        stopped.value.step)
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [stopped.value.step]
  assert isinstance(slow.config, ml_collections.FrozenConfigDict)


def _cli_args(mode, sources, workdir, steps):
  config = {"linear_eval": "configs/digits_linear.py",
            "finetune": "configs/digits_finetune.py",
            "distill": "configs/digits_distill.py:tiny"}[mode]
  args = ["-m", "simclr_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every_steps=1",
          "--config.train.log_every_steps=1",
          "--config.train.global_batch=32", "--config.eval.batch_size=64"]
  if mode == "distill":
    args.append(f"--config.distill.teacher_export={sources['teacher']}")
  else:
    args.append(f"--config.init.checkpoint_dir={sources['pretrain']}")
  if mode == "linear_eval":
    args.append("--config.eval.evaluators=('classifier',)")
  return args


@pytest.mark.parametrize("mode", ("linear_eval", "finetune", "distill"))
def test_cli_kill9_resumes_and_sigterm_exits_75(sources, tmp_path, mode):
  # Two processes of the command line per mode: kill -9, then a resume that
  # a SIGTERM stops. That a SIGTERM-stopped run resumes to the uninterrupted
  # result is checked in-process for every mode (test_engine.py) and through
  # the command line for pretraining (test_preemption_cli.py).
  workdir = str(tmp_path / "run")
  procs = []
  try:
    # 1. kill -9 once a few checkpoints exist. A save starts only once the
    # previous one is committed: when step 3 begins saving, step 1 is on disk.
    log1 = str(tmp_path / "run1.log")
    procs.append(cli._spawn(_cli_args(mode, sources, workdir, 500), log1))
    cli._wait_for(procs[-1], log1, "Saving checkpoint at step 3",
                  time.time() + cli.DEADLINE_S)
    procs[-1].send_signal(signal.SIGKILL)
    procs[-1].wait(timeout=60)
    latest = ckpt_lib.Checkpointer(workdir, 3).latest_step()
    assert latest >= 1
    # 2. The rerun resumes from the newest complete checkpoint; a SIGTERM
    # once it has saved twice more: that step is saved, exit status 75.
    log2 = str(tmp_path / "run2.log")
    procs.append(cli._spawn(_cli_args(mode, sources, workdir, 500), log2))
    cli._wait_for(procs[-1], log2, f"Resuming from checkpoint at step {latest}",
                  time.time() + cli.DEADLINE_S)
    cli._wait_for(procs[-1], log2, f"Saving checkpoint at step {latest + 2}",
                  time.time() + cli.DEADLINE_S)
    procs[-1].send_signal(signal.SIGTERM)
    rc = procs[-1].wait(timeout=120)
    text = open(log2).read()
    assert rc == preemption.PREEMPTED_EXIT_CODE, text[-4000:]
    stopped = int(text.split("preempted (SIGTERM) at step ")[1].split(";")[0])
    assert stopped >= latest + 2
    assert ckpt_lib.Checkpointer(workdir, 3).latest_step() == stopped
    assert not os.path.exists(os.path.join(workdir, f"{mode}_results.json"))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("overrides,field", [
    # The embedding map of a small eval split: 360 points, perplexity 500.
    (["--config.eval.evaluators=('classifier','knn','pictures')",
      "--config.viz.tsne_perplexity=500"],
     "viz.tsne_perplexity=500.0"),
    (["--config.eval.knn_k=5000"], "eval.knn_k=5000"),
    (["--config.train.global_batch=2048"], "train.global_batch=2048"),
    (["--config.loss.temperature=nan"], "loss.temperature=nan"),
    (["--config.eval.batch_size=0"], "eval.batch_size=0"),
])
def test_config_errors_are_one_line_with_status_2_before_compiling(
    tmp_path, overrides, field):
  cmd = [sys.executable, "-m", "simclr_jax.main",
         "--config=configs/digits.py:tiny",
         f"--workdir={tmp_path / 'run'}", *overrides]
  proc = subprocess.run(cmd, cwd=cli.REPO, env=cli._env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: config.{field} is invalid: " +
                    errors[0].split(" is invalid: ")[1]], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "Initial compilation" not in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
