"""`launch/gpu_check.sh --dry-run`: every stage on CPU, the table's rows.

The script is made for a GPU machine that this test suite never sees; its
dry run goes through the same stages with a tiny model, so a renamed flag,
module or test file fails here instead of there.
"""

import json
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


@pytest.mark.quick
def test_unknown_argument_is_refused_in_one_line():
  proc = subprocess.run(["bash", SCRIPT, "--nope"], capture_output=True,
                        text=True, timeout=30, check=False)
  assert proc.returncode == 2
  assert proc.stderr.splitlines()[0] == "gpu_check.sh: unknown argument --nope"


@pytest.mark.quick
def test_table_lines_from_hand_made_rows(tmp_path):
  from simclr_jax.tools import device_check  # pylint: disable=g-import-not-at-top
  mib = 2 ** 20
  base = {"devices": 2, "device_kind": "cpu", "image_size": 16, "depth": 18,
          "dtype": "float32", "jax": "0.x", "on_device_aug": False}
  rows = {
      "bench_00008.json": dict(base, per_chip_batch=8,
                               images_per_sec_per_chip=150.0,
                               flops_per_sec_per_chip=3e12, compile_s=4.0,
                               peak_bytes=2.5 * mib, peak_source="device"),
      "bench_00004.json": dict(base, per_chip_batch=4,
                               images_per_sec_per_chip=100.0,
                               flops_per_sec_per_chip=2e12, compile_s=3.3,
                               peak_bytes=3 * mib, peak_source="xla"),
      # The same batch with on-device augmentation: 80 images/s instead of
      # 100, so the augmentation adds 100 / 80 - 1 = 25% to the step.
      "bench_00004_paired.json": dict(base, per_chip_batch=4, paired=True,
                                      on_device_aug=True,
                                      images_per_sec_per_chip=80.0,
                                      flops_per_sec_per_chip=1.6e12,
                                      compile_s=5.0, peak_bytes=mib,
                                      peak_source="xla"),
      "matmul.json": {"matmul_flops_per_sec": 8e12, "side": 512,
                      "dtype": "float32", "device_kind": "cpu"}}
  for name, row in rows.items():
    (tmp_path / name).write_text(json.dumps(row))
  (tmp_path / "bench_00016.json").write_text("{")  # a stage that died
  assert device_check.table_lines(str(tmp_path))[2:] == [
      "| 4 | 100.0 | 2.000 | 25.0% | 3.0 (XLA est.) | 3.3 |",
      "| 8 | 150.0 | 3.000 | 37.5% | 2.5 | 4.0 |",
      "on-device augmentation at 4/chip: 80.0 images/s/chip with it, 100.0 "
      "without: adds 25.0% to the step",
      "ResNet-18, 16 px, float32, synthetic data, no augmentation, 2 x cpu, "
      "jax 0.x; matmul rate 8.00 TFLOP/s (float32, side 512)"]
