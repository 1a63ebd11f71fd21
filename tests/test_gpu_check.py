"""`launch/gpu_check.sh --dry-run`: every stage on CPU, the table's rows.

The script is made for a GPU machine that this test suite never sees; its
dry run goes through the same stages with a tiny model, so a renamed flag,
module or test file fails here instead of there.
"""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "gpu_check.sh")
TIMEOUT_S = 600  # six stages, two small compiles each, on a shared host
STAGES = ("env", "tests on CPU devices", "tests on cpu", "bench 4/chip",
          "bench 8/chip", "bench 4/chip, other aug.on_device", "matmul")


def test_dry_run_runs_every_stage_and_prints_the_table(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)  # the script's stages choose their devices
  proc = subprocess.Popen(["bash", SCRIPT, "--dry-run", "--out",
                           str(tmp_path)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)  # the script and its stages
    out, _ = proc.communicate()
    pytest.fail(f"dry run over {TIMEOUT_S} s:\n{out[-4000:]}")
  assert proc.returncode == 0, out[-6000:]
  for stage in STAGES:
    assert re.search(rf"^== {re.escape(stage)}: ok in \d+ s$", out,
                     re.M), (stage, out[-6000:])
  rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)% \| "
                    r"([\d.]+) \(XLA est\.\) \| ([\d.]+) \|$", out, re.M)
  assert [int(r[0]) for r in rows] == [4, 8], out[-3000:]
  for _, ips, tflops, frac, mem, compile_s in rows:
    assert float(ips) > 0 and float(tflops) > 0 and float(frac) > 0
    assert float(mem) > 0 and float(compile_s) > 0
  assert "ResNet-18, 16 px, float32, synthetic data, no augmentation" in out
  # The paired row: batch 4 again with on-device augmentation, and its share
  # of the step computed from the two rows' own figures.
  with_ips, without_ips, added = map(float, re.search(
      r"^on-device augmentation at 4/chip: ([\d.]+) images/s/chip with it, "
      r"([\d.]+) without: adds (-?[\d.]+)% to the step$", out, re.M).groups())
  assert with_ips > 0 and without_ips == float(rows[0][1])
  assert abs(added - (without_ips / with_ips - 1) * 100) < 0.2
  assert "all stages passed" in out
  assert sorted(os.listdir(tmp_path)) == [
      "bench_00004.json", "bench_00004_paired.json", "bench_00008.json",
      "env.json", "matmul.json"]


def test_unknown_argument_is_refused_in_one_line():
  proc = subprocess.run(["bash", SCRIPT, "--nope"], capture_output=True,
                        text=True, timeout=30, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[0] == "gpu_check.sh: unknown argument --nope"
