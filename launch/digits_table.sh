#!/usr/bin/env bash
# The digits results table: SimCLR encoder vs the same ResNet randomly
# initialised vs raw pixels; fast linear probe at 100% and 10% of the labels,
# kNN, and the SGD linear eval. Needs a pretraining workdir (digits_demo.sh).
#   bash launch/digits_table.sh [WORKDIR]       (default runs/digits)
# SEED (default 0) seeds the linear heads, the random encoder and the data
# order; launch/digits_seeds.sh runs the whole table over several seeds.
set -euo pipefail
WORKDIR=${1:-runs/digits}
PYTHON=${PYTHON:-python}
SEED=${SEED:-0}
cd "$(dirname "$0")/.."
OUT="$WORKDIR/table"

for frac in 1.0 0.1; do
  "$PYTHON" -m simclr_jax.main --config=configs/digits_linear.py \
    --workdir="$OUT/simclr_$frac" --config.init.checkpoint_dir="$WORKDIR" \
    --config.eval.label_fraction=$frac --config.seed="$SEED"
  "$PYTHON" -m simclr_jax.main --config=configs/digits_linear.py:random \
    --workdir="$OUT/random_$frac" --config.eval.label_fraction=$frac \
    --config.seed="$SEED"
  "$PYTHON" -m simclr_jax.main --config=configs/digits_linear.py:pixels \
    --workdir="$OUT/pixels_$frac" --config.eval.label_fraction=$frac \
    --config.seed="$SEED"
done

"$PYTHON" -m simclr_jax.tools.results_table "$WORKDIR"
