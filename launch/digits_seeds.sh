#!/usr/bin/env bash
# The digits demo and results table over several seeds, as mean ± sd.
# For each seed: pretrain configs/digits.py with --config.seed=SEED (its three
# printed accuracies: online probe, kNN, fast linear probe), then every cell of
# launch/digits_table.sh with the same seed. Ends by printing both tables.
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

"$PYTHON" - "$ROOT" $SEEDS <<'PY'
import json, os, sys
import numpy as np
root, seeds = sys.argv[1], sys.argv[2:]

def load(path):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)

def band(values):
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  v = 100 * np.asarray(values)
  sd = v.std(ddof=1) if len(v) > 1 else 0.0
  return f"{v.mean():.1f} ± {sd:.1f}"

def top1(res, key):
  return None if res is None or key not in res else res[key]["top1"]

runs = {s: load(os.path.join(root, f"seed{s}", "pretrain_results.json"))
        for s in seeds}
print(f"seeds {' '.join(seeds)}: mean ± sd (sample), top-1 %")
print()
print("| printed by the demo | " + " | ".join(f"seed {s}" for s in seeds)
      + " | mean ± sd |")
print("|---|" + "---|" * (len(seeds) + 1))
for key, name in (("probe", "online linear probe"), ("knn", "kNN"),
                  ("linear_probe", "linear probe")):
  vals = [top1(runs[s], key) for s in seeds]
  cells = " | ".join("-" if v is None else f"{v:.4f}" for v in vals)
  print(f"| {name} | {cells} | {band(vals)} |")
print()

def cell(name, frac, key):
  return band([top1(load(os.path.join(
      root, f"seed{s}", "table", f"{name}_{frac}", "linear_eval_results.json")),
      key) for s in seeds])

print("| encoder | linear probe, 100% labels | linear probe, 10% labels "
      "| kNN (k=20) | SGD linear eval, 100% | SGD linear eval, 10% |")
print("|---|---|---|---|---|---|")
for name, label in (("simclr", "SimCLR (configs/digits.py)"),
                    ("random", "same ResNet, random init"),
                    ("pixels", "raw pixels")):
  print(f"| {label} | {cell(name, '1.0', 'linear_probe')} | "
        f"{cell(name, '0.1', 'linear_probe')} | {cell(name, '1.0', 'knn')} | "
        f"{cell(name, '1.0', 'linear')} | {cell(name, '0.1', 'linear')} |")
PY
