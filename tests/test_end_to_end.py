"""End to end: digits pretraining through the command line writes its
checkpoints, results and events (resuming through the command line, also with
more steps, is in test_preemption_cli)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600


def _run_main(workdir, *overrides, devices=2):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "simclr_jax.main",
         "--config=configs/digits.py:tiny", f"--workdir={workdir}",
         *overrides]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def _steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())


def test_pretrain_writes_checkpoints_results_and_events(tmp_path):
  workdir = str(tmp_path / "run")
  first = _run_main(workdir, "--config.train.steps=4")
  assert _steps(workdir) == [2, 4]
  assert "linear probe top-1 accuracy on test" in first.stdout
  with open(os.path.join(workdir, "pretrain_results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4
  assert results["probe"]["num_examples"] == 360  # every test digit, once
  assert os.listdir(workdir) and any(
      name.startswith("events.out.tfevents") for name in os.listdir(workdir))
