"""The digits results tables from one or more pretraining workdirs.

  python -m simclr_jax.tools.results_table runs/digits
  python -m simclr_jax.tools.results_table runs/digits_seeds/seed{0,1,2}

Reads what launch/digits_demo.sh / digits_table.sh / digits_seeds.sh wrote:
each workdir's `pretrain_results.json` (the three accuracies the demo prints)
and `table/<encoder>_<fraction>/linear_eval_results.json`. With several
workdirs (one per seed) every cell is the mean ± sample standard deviation.
"""

import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

# What the demo prints at the end of pretraining, in its order.
DEMO_ROWS = (("probe", "online linear probe"), ("knn", "kNN"),
             ("linear_probe", "linear probe"))
# Rows of the encoder table: the directory prefix under table/ and the label.
ENCODERS = (("simclr", "SimCLR (configs/digits.py)"),
            ("random", "same ResNet, random init"),
            ("pixels", "raw pixels"))
# Columns: (label fraction directory, result key, heading).
COLUMNS = (("1.0", "linear_probe", "linear probe, 100% labels"),
           ("0.1", "linear_probe", "linear probe, 10% labels"),
           ("1.0", "knn", "kNN (k=20)"),
           ("1.0", "linear", "SGD linear eval, 100%"),
           ("0.1", "linear", "SGD linear eval, 10%"))


def _top1(path: str, key: str) -> Optional[float]:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    result = json.load(f)
  return result[key]["top1"] if key in result else None


def cell(values: Sequence[Optional[float]]) -> str:
  """Percent, as `mean ± sd` over the runs that have the value ('-' if none).

  Args:
    values: top-1 fractions, None where a run lacks the result.

  Returns:
    One value as `99.2`, several as `99.2 ± 0.3` (sample sd, ddof=1).
  """
  got = 100 * np.asarray([v for v in values if v is not None])
  if got.size == 0:
    return "-"
  if got.size == 1:
    return f"{got[0]:.1f}"
  return f"{got.mean():.1f} ± {got.std(ddof=1):.1f}"


def demo_table(workdirs: Sequence[str]) -> List[str]:
  """Markdown rows: the three printed accuracies per workdir and their band."""
  runs = [os.path.join(w, "pretrain_results.json") for w in workdirs]
  lines = ["| printed by the demo | " + " | ".join(
      os.path.basename(w.rstrip("/")) for w in workdirs) + " | mean ± sd |",
           "|---|" + "---|" * (len(workdirs) + 1)]
  for key, name in DEMO_ROWS:
    values = [_top1(r, key) for r in runs]
    shown = " | ".join("-" if v is None else f"{v:.4f}" for v in values)
    lines.append(f"| {name} | {shown} | {cell(values)} |")
  return lines


def encoder_table(workdirs: Sequence[str]) -> List[str]:
  """Markdown rows of the results table (encoder × protocol)."""
  lines = ["| encoder | " + " | ".join(c[2] for c in COLUMNS) + " |",
           "|---|" + "---|" * len(COLUMNS)]
  for name, label in ENCODERS:
    cells = []
    for frac, key, _ in COLUMNS:
      paths = [os.path.join(w, "table", f"{name}_{frac}",
                            "linear_eval_results.json") for w in workdirs]
      cells.append(cell([_top1(p, key) for p in paths]))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines


def main(argv: Sequence[str]) -> int:
  """Prints both tables for the workdirs in argv; returns the exit status."""
  workdirs = list(argv)
  if not workdirs:
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    return 2
  tables: Dict[str, List[str]] = {
      "demo": demo_table(workdirs), "encoders": encoder_table(workdirs)}
  print(f"top-1 % over {len(workdirs)} run(s): {' '.join(workdirs)}")
  for lines in tables.values():
    print()
    print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
