#!/usr/bin/env bash
# Checks simclr_jax on a GPU machine as it is: in under 8 minutes, one table.
#
# Made for a JAX-only box (jax with its CUDA plugin, flax, optax,
# orbax-checkpoint, absl, chex, etils; no TensorFlow, TFDS, ml-collections or
# clu; no network). Nothing is installed machine-wide: the wheels you bring in
# --wheels DIR (ml-collections, PyYAML for your Python, optionally
# tensorboardX; all small) are unpacked into OUT/site, which joins PYTHONPATH
# with the checkout. Stages, each bounded by its own timeout (the sum stays < 8 min):
#   env     versions, devices, missing packages (stops here if any)
#   tests   TensorFlow-free tests with TF/TFDS/clu blocked: on 8 forced CPU
#           devices (JAX_PLATFORMS=cpu), then the device-agnostic ones on GPU
#   bench   ResNet-50, 224 px, bfloat16 pretraining step on synthetic data,
#           one process per batch size (its own peak memory), on-device
#           augmentation in the step; then one batch size again without it
#           (what the augmentation adds to the step)
#   matmul  square-matmul rate of one chip in the model's dtype (bf16), same run
#   table   images/s per chip, achieved FLOP/s, fraction of the matmul rate,
#           peak memory, compile time (rows of stages that failed are absent)
# --dry-run runs every stage on CPU with a tiny model at 16 px (the tests run
# it), so the script cannot rot unseen.
#
# Usage:
#   launch/gpu_check.sh [--dry-run] [--wheels DIR] [--out DIR]
# Example (a GPU machine, wheels copied to ~/wheels):
#   launch/gpu_check.sh --wheels ~/wheels --out /tmp/gpu_check 2>&1 | tee log
set -uo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
dry=0
wheels=""
out=""
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage ;;
  esac
  shift
done
out="${out:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}"
mkdir -p "$out"

# What runs where. The real run: ResNet-50/224/bf16 at three batch sizes
# per chip; the dry run: the tiny synthetic config on CPU.
if [ "$dry" = 1 ]; then
  config="$repo/configs/synthetic.py:tiny"
  batches="4 8"
  bench_flags="--steps=3 --warmup_steps=1"
  pair_batch=4; pair_flags="--config.aug.on_device=True"
  matmul_side=256
  # The quick tier of one file: the stage's machinery, not the tests (the
  # suite runs them all anyway).
  cpu_tests="tests/test_synthetic.py -m quick"
  gpu_tests="tests/test_tf_free.py::test_blocker_acts_like_a_missing_package"
  gpu_platform="cpu"
  t_env=60; t_cpu=300; t_gpu=120; t_bench=120; t_matmul=60
else
  config="$repo/configs/synthetic.py"
  batches="64 128 256"
  bench_flags="--steps=20 --warmup_steps=3"
  pair_batch=128; pair_flags="--config.aug.on_device=False"
  matmul_side=8192
  cpu_tests="tests/test_synthetic.py tests/test_writer.py tests/test_losses.py
    tests/test_knn.py tests/test_layout.py tests/test_progress.py
    tests/test_tf_free.py"
  gpu_tests="tests/test_tf_free.py"  # the worker: synthetic data made on the GPU
  gpu_platform="cuda"
  # 15 + 100 + 70 + 4 x 70 + 10 = 475 s at most, under 8 minutes.
  t_env=15; t_cpu=100; t_gpu=70; t_bench=70; t_matmul=10
fi

if [ -n "$wheels" ]; then
  # A wheel is a zip of its packages: unpacked into OUT/site, it needs
  # neither pip nor a network, and changes nothing outside OUT.
  for w in "$wheels"/*.whl; do
    echo "== unpacking $(basename "$w") into $out/site"
    "$py" -m zipfile -e "$w" "$out/site" || { echo "cannot unpack $w" >&2; exit 1; }
  done
fi
export PYTHONPATH="$repo${wheels:+:$out/site}${PYTHONPATH:+:$PYTHONPATH}"
cd "$repo" || exit 1
tool=("$py" -m simclr_jax.tools.device_check "--config=$config" "--out=$out")
status=0
stage() {  # stage NAME TIMEOUT_S CMD...: runs, reports, remembers a failure
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "== $name: $([ $rc = 0 ] && echo ok || echo "FAILED (status $rc)") in $((SECONDS - t0)) s"
  [ $rc = 0 ] || status=1
  return $rc
}
# pytest with TensorFlow, TFDS and clu unimportable (tests/tf_blocker.py).
blocked_pytest=("$py" -c 'import sys; sys.path.insert(0, "tests")
import tf_blocker; tf_blocker.install(); import pytest
sys.exit(pytest.main(sys.argv[1:]))' -q -p no:cacheprovider \
  -o "addopts=--strict-markers")  # one process: pytest.ini's workers would
  # import TensorFlow unblocked (and a JAX-only box has no pytest-xdist)

stage env "$t_env" "${tool[@]}" --stage=env || { echo "gpu_check: stopping: fix the environment first" >&2; exit 1; }
# shellcheck disable=SC2086
JAX_PLATFORMS=cpu stage "tests on CPU devices" "$t_cpu" "${blocked_pytest[@]}" $cpu_tests
# The tests' conftest hides GPUs unless CUDA_VISIBLE_DEVICES is set.
# shellcheck disable=SC2086
CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" JAX_PLATFORMS="$gpu_platform" \
  stage "tests on $gpu_platform" "$t_gpu" "${blocked_pytest[@]}" $gpu_tests
for b in $batches; do
  # shellcheck disable=SC2086
  JAX_PLATFORMS="$gpu_platform" stage "bench ${b}/chip" "$t_bench" \
    "${tool[@]}" --stage=bench --per_chip_batch="$b" $bench_flags
done
# The same step with the other aug.on_device setting: the augmentation's share.
# shellcheck disable=SC2086
JAX_PLATFORMS="$gpu_platform" stage "bench ${pair_batch}/chip, other aug.on_device" \
  "$t_bench" "${tool[@]}" --stage=bench --per_chip_batch="$pair_batch" \
  --paired $pair_flags $bench_flags
JAX_PLATFORMS="$gpu_platform" stage matmul "$t_matmul" "${tool[@]}" \
  --stage=matmul --matmul_side="$matmul_side"
echo "== table ($out)"
JAX_PLATFORMS=cpu "${tool[@]}" --stage=table
echo "gpu_check: $([ $status = 0 ] && echo "all stages passed" || echo "some stages FAILED") in ${SECONDS} s"
exit $status
