"""The CPU study: which recipe learns the most per minute on a small machine.

  python -m simclr_jax.tools.cpu_study --data=digits --grid=screen \\
      --seeds=0 --root=runs/cpu_study
  python -m simclr_jax.tools.cpu_study --data=patches --grid=patches \\
      --seeds=0 --root=runs/cpu_study --images=runs/skimage_patches
  python -m simclr_jax.tools.cpu_study --report --root=runs/cpu_study \\
      --figure=docs/images/cpu_study.png

Each entry of a grid is a configuration (config file plus overrides) trained
for a number of steps by `python -m simclr_jax.main` in its own process, one
run at a time, timed from the outside (what a user waits for: start-up,
compiles, training and the final kNN and linear probe). Each finished run is
one row of `<root>/runs.csv` (configuration, data, seed, steps, minutes,
train seconds, kNN, linear probe); a rerun skips the rows already there, so
a stopped study resumes. `--report` prints the table (mean ± sd over seeds)
and draws accuracy against minutes, one line per configuration.

`--data=digits` is scikit-learn's bundled handwritten digits
(`configs/digits.py:r18`, the recipe the study started from);
`--data=patches` is a labelled folder of patches of scikit-image's bundled
photographs and textures written by
`launch/skimage_patches.py` (`configs/folder.py:cpu`).
"""

import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from absl import app
from absl import flags

_DATA = flags.DEFINE_enum("data", "digits", ["digits", "patches"],
                          "which image set")
_GRID = flags.DEFINE_string("grid", "screen", "which grid of GRIDS")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "seeds to run each entry with")
_ROOT = flags.DEFINE_string("root", "runs/cpu_study",
                            "workdirs and runs.csv go here")
_IMAGES = flags.DEFINE_string("images", "runs/skimage_patches",
                              "the folder of launch/skimage_patches.py "
                              "(--data=patches)")
_ONLY = flags.DEFINE_list("only", [], "run only these entry names")
_REPORT = flags.DEFINE_bool("report", False,
                            "print the table of runs.csv instead of running")
_FIGURE = flags.DEFINE_string("figure", "", "with --report: write the plot")

# The base config of each image set.
# Each entry sets its architecture and steps; the rest is the base's. Digits
# start from the demo's recipe before the study (LARS lr 1.0), so that every
# row measured against it reruns as it was now that configs/digits.py is the
# study's winner; the LAMB entries set the optimizer themselves.
BASES = {"digits": "configs/digits.py:r18", "patches": "configs/folder.py:cpu"}
# The study reads the two final figures; no periodic evaluation or pictures.
STUDY_OVERRIDES = ("--config.eval.evaluators=('knn','fast_probe')",
                   "--config.train.eval_every_steps=0",
                   "--config.train.checkpoint_every_steps=100000")

# Named architectures: (stage_sizes, base_widths).
ARCHS = {
    "r18/4": ((2, 2, 2, 2), (16, 32, 64, 128)),  # the recipes before the study
    "s3-32": ((1, 1, 1), (32, 64, 128)),
    "s3-16": ((1, 1, 1), (16, 32, 64)),
}


def _entry(arch: str, steps: int, **fields) -> Tuple[str, List[str]]:
  """(name, overrides) for `arch` trained `steps` steps with `fields`."""
  stages, widths = ARCHS[arch]
  name = f"{arch} {steps} steps" + "".join(
      f" {k.split('.')[-1]}={v}" for k, v in sorted(fields.items()))
  overrides = [f"--config.model.stage_sizes={stages}".replace(" ", ""),
               f"--config.model.base_widths={widths}".replace(" ", ""),
               f"--config.train.steps={steps}"]
  overrides += [f"--config.{k}={v}" for k, v in fields.items()]
  return name, overrides


# Each grid: entries of (name, overrides). `screen` compares architectures,
# batch and temperature at two to five minutes on digits; `recipes` runs the
# base config as it is (its own steps and model), for the recipes' seeds.
GRIDS: Dict[str, List[Tuple[str, List[str]]]] = {
    "screen": [
        _entry("s3-16", 100),
        _entry("s3-16", 300),
        _entry("s3-16", 600, **{"train.global_batch": 128}),
        _entry("r18/4", 170),
        _entry("s3-16", 300, **{"loss.temperature": 0.1}),
        _entry("s3-32", 200),
    ],
    "recipes": [("config as written", [])],
    # One field at a time against `s3-16 300 steps` of the screen (LARS, lr
    # 1.0, colour strength 0.5, crops of 20-100% of the area): AdamW at the
    # small batch, LAMB at two learning rates, stronger colour jitter,
    # smaller crops; and the longest budget, `s3-32` for about ten minutes.
    "more": [
        _entry("s3-16", 300, **{"optim.name": "adamw", "optim.base_lr": 0.002,
                                "optim.weight_decay": 1e-4}),
        _entry("s3-16", 300, **{"optim.name": "lamb", "optim.base_lr": 0.01}),
        _entry("s3-16", 300, **{"optim.name": "lamb", "optim.base_lr": 0.003}),
        _entry("s3-16", 300, **{"aug.color_strength": 1.0}),
        _entry("s3-16", 300, **{"aug.crop_area_min": 0.08}),
        _entry("s3-32", 500),
    ],
    # The reference recipe at our step rate: `s3-32` for 1,500 steps
    # of batch 256 at 16 px (about half an hour here).
    "long": [
        _entry("s3-32", 1500),
    ],
    # Digits at their own 8 px instead of upscaled to 16: a step of `s3-16`
    # costs less than half, so the same minutes buy over twice the steps.
    "native": [
        _entry("s3-16", 1500, **{"data.image_size": 8}),
    ],
    # The second image set (--data=patches), trained through
    # configs/folder.py:cpu with each entry's model and steps: the recipe
    # before the study (a quarter-width ResNet-18, 30 epochs of 800 patches
    # = 90 steps at 16 px) against three-stage nets in about the same
    # minutes, one at the patches' own 32 px, and the three-stage net at the
    # same 30 epochs (the recipe after the study).
    "patches": [
        _entry("r18/4", 90),
        _entry("s3-16", 300),
        _entry("s3-32", 120),
        _entry("s3-16", 100, **{"data.image_size": 32}),
        _entry("s3-32", 90),
    ],
}

FIELDS = ("data", "name", "seed", "steps", "minutes", "train_seconds", "knn",
          "linear_probe")


def run_one(data: str, name: str, overrides: Sequence[str], seed: int,
            root: str, images: str) -> Dict[str, object]:
  """Trains and evaluates one entry in its own process; returns its row."""
  safe = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
  workdir = os.path.join(root, data, safe, f"seed{seed}")
  argv = [sys.executable, "-m", "simclr_jax.main", f"--config={BASES[data]}",
          f"--workdir={workdir}", f"--config.seed={seed}",
          *STUDY_OVERRIDES, *overrides]
  if data == "patches":
    argv.append(f"--config.data.data_dir={images}")
  started = time.monotonic()
  subprocess.run(argv, check=True)
  minutes = (time.monotonic() - started) / 60
  with open(os.path.join(workdir, "pretrain_results.json")) as f:
    results = json.load(f)
  return {"data": data, "name": name, "seed": seed,
          "steps": results["step"], "minutes": round(minutes, 3),
          "train_seconds": round(results["seconds"]["train"], 1),
          "knn": results["knn"]["top1"],
          "linear_probe": results["linear_probe"]["top1"]}


def read_rows(root: str) -> List[Dict[str, str]]:
  """The rows of `<root>/runs.csv` ([] when there is none)."""
  path = os.path.join(root, "runs.csv")
  if not os.path.isfile(path):
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def append_row(root: str, row: Dict[str, object]) -> None:
  """Appends one row to `<root>/runs.csv` (header on the first)."""
  path = os.path.join(root, "runs.csv")
  new = not os.path.isfile(path)
  os.makedirs(root, exist_ok=True)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    if new:
      writer.writeheader()
    writer.writerow(row)


def summarize(rows: Sequence[Dict[str, str]]) -> List[Dict[str, object]]:
  """Mean and sample sd over seeds of each (data, name), in first-seen order."""
  groups: Dict[Tuple[str, str], List[Dict[str, str]]] = {}
  for row in rows:
    groups.setdefault((row["data"], row["name"]), []).append(row)
  out = []
  for (data, name), got in groups.items():
    item = {"data": data, "name": name, "seeds": len(got),
            "steps": int(got[0]["steps"])}
    for key in ("minutes", "knn", "linear_probe"):
      values = np.array([float(r[key]) for r in got])
      scale = 1 if key == "minutes" else 100
      item[key] = scale * values.mean()
      item[key + "_sd"] = scale * values.std(ddof=1) if len(got) > 1 else 0.0
    out.append(item)
  return out


def table(summary: Sequence[Dict[str, object]]) -> str:
  """The markdown table of `summarize`'s output."""
  lines = ["| data | configuration | seeds | minutes | kNN | linear probe |",
           "|---|---|---|---|---|---|"]
  for s in summary:
    def cell(key, digits=1):
      if s["seeds"] > 1:
        return f"{s[key]:.{digits}f} ± {s[key + '_sd']:.{digits}f}"
      return f"{s[key]:.{digits}f}"
    lines.append(f"| {s['data']} | {s['name']} | {s['seeds']} | "
                 f"{cell('minutes')} | {cell('knn')} | "
                 f"{cell('linear_probe')} |")
  return "\n".join(lines)


def plot(summary: Sequence[Dict[str, object]], path: str) -> None:
  """kNN and linear probe against minutes, one marker per configuration."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  # Colour and marker both change from entry to entry: 20 entries stay apart.
  colours = plt.get_cmap("tab20").colors
  markers = "osD^vP*Xh<>p"
  datas = sorted({s["data"] for s in summary})
  fig, axes = plt.subplots(len(datas), 2, figsize=(15, 4 * len(datas)),
                           squeeze=False)
  for row, data in zip(axes, datas):
    for ax, key, label in zip(row, ("knn", "linear_probe"),
                              ("kNN top-1 (%)", "linear probe top-1 (%)")):
      for i, s in enumerate(s for s in summary if s["data"] == data):
        ax.errorbar(s["minutes"], s[key], xerr=s["minutes_sd"],
                    yerr=s[key + "_sd"], fmt=markers[i % len(markers)],
                    color=colours[i % len(colours)], capsize=3,
                    label=f"{s['name']} (n={s['seeds']})")
      # Budgets from one to thirty minutes: a log axis keeps the short ones
      # apart.
      ax.set_xscale("log")
      ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      ax.set_xticks([1, 2, 3, 5, 10, 20, 30])
      ax.set_xlabel("minutes (start to final evaluation, log scale)")
      ax.set_ylabel(label)
      ax.set_title(f"{data}: {label}")
      ax.grid(alpha=0.3)
    # Beside the plots, so that no legend hides a marker.
    row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)


def main(argv: Sequence[str]) -> None:
  """Runs the grid (skipping finished rows) or prints the report."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = _ROOT.value
  if _REPORT.value:
    summary = summarize(read_rows(root))
    print(table(summary))
    if _FIGURE.value:
      plot(summary, _FIGURE.value)
      print(f"wrote {_FIGURE.value}")
    return
  if _GRID.value not in GRIDS:
    raise app.UsageError(f"--grid={_GRID.value!r}; allowed: {sorted(GRIDS)}")
  done = {(r["data"], r["name"], r["seed"]) for r in read_rows(root)}
  for name, overrides in GRIDS[_GRID.value]:
    if _ONLY.value and name not in _ONLY.value:
      continue
    for seed in _SEEDS.value:
      if (_DATA.value, name, seed) in done:
        continue
      row = run_one(_DATA.value, name, overrides, int(seed), root,
                    _IMAGES.value)
      append_row(root, row)
      print(f"{row['data']} | {name} | seed {seed} | {row['minutes']:.2f} min"
            f" | kNN {100 * row['knn']:.1f} | linear "
            f"{100 * row['linear_probe']:.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
