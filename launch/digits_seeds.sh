#!/usr/bin/env bash
# The digits demo and results table over several seeds, as mean ± sd.
# For each seed: pretrain configs/digits.py with --config.seed=SEED (its three
# printed accuracies: online probe, kNN, fast linear probe), then every cell of
# launch/digits_table.sh with the same seed. Ends by printing both tables
# (python -m simclr_jax.tools.results_table ROOT/seed*).
#   bash launch/digits_seeds.sh [ROOT] [SEEDS]   (default runs/digits_seeds "0 1 2")
# The labelled 10% subset stays the same (eval.label_seed); the seed changes
# parameter init, data order and augmentation. Runs one job at a time.
set -euo pipefail
ROOT=${1:-runs/digits_seeds}
SEEDS=${2:-0 1 2}
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHON

for seed in $SEEDS; do
  "$PYTHON" -m simclr_jax.main --config=configs/digits.py \
    --workdir="$ROOT/seed$seed" --config.seed="$seed"
  SEED=$seed bash launch/digits_table.sh "$ROOT/seed$seed" >/dev/null
done

dirs=()
for seed in $SEEDS; do dirs+=("$ROOT/seed$seed"); done
"$PYTHON" -m simclr_jax.tools.results_table "${dirs[@]}"
