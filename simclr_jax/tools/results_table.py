"""The digits results tables from one or more pretraining workdirs.

  python -m simclr_jax.tools.results_table runs/digits
  python -m simclr_jax.tools.results_table runs/digits_seeds/seed{0,1,2} \
      [--figure=docs/images/digits_seeds.png]

Reads what launch/digits_demo.sh / digits_table.sh / digits_seeds.sh wrote:
each workdir's `pretrain_results.json` (the three accuracies the demo prints)
and `table/<encoder>_<fraction>/linear_eval_results.json`. With several
workdirs (one per seed) every cell is the mean ± sample standard deviation;
--figure draws every run's value and the mean ± sd as a PNG.
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


def _values(workdirs: Sequence[str]):
  """(label, [top-1 % per run]) for every demo row and table cell with data."""
  out = []
  for key, name in DEMO_ROWS:
    out.append((f"demo: {name}", [_top1(os.path.join(
        w, "pretrain_results.json"), key) for w in workdirs]))
  for name, label in ENCODERS:
    for frac, key, heading in COLUMNS:
      out.append((f"{name}: {heading}", [_top1(os.path.join(
          w, "table", f"{name}_{frac}", "linear_eval_results.json"), key)
                                         for w in workdirs]))
  return [(label, [100 * v for v in vals if v is not None])
          for label, vals in out if any(v is not None for v in vals)]


def figure(workdirs: Sequence[str], path: str) -> None:
  """Writes a PNG: each run's top-1 as a dot, the mean ± sd as a bar.

  Args:
    workdirs: pretraining workdirs, one per seed.
    path: the PNG to write.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  rows = _values(workdirs)
  height = 0.32 * len(rows) + 0.9  # inches: a row each, axis label below
  fig = Figure(figsize=(8, height), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_axes((0.38, 0.6 / height, 0.58, (height - 0.8) / height))
  for i, (_, vals) in enumerate(rows):
    y = len(rows) - 1 - i
    mean = float(np.mean(vals))
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    ax.errorbar(mean, y, xerr=sd, fmt="s", color="black", capsize=3, ms=4)
    ax.scatter(vals, [y] * len(vals), color="tab:blue", s=12, alpha=0.7,
               zorder=3)
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels([label for label, _ in rows][::-1], fontsize=8)
  ax.set_xlabel(f"test top-1 % (dots: {len(workdirs)} seeds; "
                "square and bar: mean ± sd)")
  ax.grid(axis="x", alpha=0.3)
  fig.savefig(path)


def main(argv: Sequence[str]) -> int:
  """Prints both tables for the workdirs in argv; returns the exit status."""
  figures = [a.split("=", 1)[1] for a in argv if a.startswith("--figure=")]
  workdirs = [a for a in argv if not a.startswith("--figure=")]
  if not workdirs:
    print(__doc__.strip().splitlines()[0], file=sys.stderr)
    return 2
  tables: Dict[str, List[str]] = {
      "demo": demo_table(workdirs), "encoders": encoder_table(workdirs)}
  print(f"top-1 % over {len(workdirs)} run(s): {' '.join(workdirs)}")
  for lines in tables.values():
    print()
    print("\n".join(lines))
  for path in figures:
    figure(workdirs, path)
    print(f"\nfigure: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
