#!/usr/bin/env bash
# SimCLR on the offline digits data, end to end on a CPU:
# pretrain (ends by printing the kNN and linear-probe test accuracy), export
# the encoder, then evaluate the export with the linear-eval protocols.
#   bash launch/digits_demo.sh [WORKDIR]        (default runs/digits)
# PYTHON selects the interpreter (default: the checkout's .venv made by the
# README's quickstart, else python3 on the PATH).
set -euo pipefail
WORKDIR=${1:-runs/digits}
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

"$PYTHON" -m simclr_jax.main --config=configs/digits.py --workdir="$WORKDIR"
"$PYTHON" -m simclr_jax.export --workdir="$WORKDIR" --out="$WORKDIR/export"
"$PYTHON" -m simclr_jax.evaluate --export="$WORKDIR/export" \
  --config=configs/digits_linear.py --workdir="$WORKDIR/eval"
