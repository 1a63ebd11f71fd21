"""The results-table tool: mean ± sample sd over seeds, '-' where missing."""

import json
import os

import numpy as np
import pytest

from simclr_jax.tools import results_table

pytestmark = pytest.mark.quick


def _write(path, results):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f)


def test_tables_over_seeds(tmp_path, capsys):
  probe = [0.86, 0.88, 0.87]
  lin = [0.95, 0.97, 0.96]
  dirs = []
  for seed, (p, l) in enumerate(zip(probe, lin)):
    workdir = str(tmp_path / f"seed{seed}")
    dirs.append(workdir)
    _write(os.path.join(workdir, "pretrain_results.json"),
           {"probe": {"top1": p}, "knn": {"top1": 0.9}})
    _write(os.path.join(workdir, "table", "simclr_1.0",
                        "linear_eval_results.json"), {"linear": {"top1": l}})
  png = str(tmp_path / "seeds.png")
  assert results_table.main(dirs + [f"--figure={png}"]) == 0
  out = capsys.readouterr().out
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  want = 100 * np.asarray(probe)
  assert (f"| online linear probe | 0.8600 | 0.8800 | 0.8700 | "
          f"{want.mean():.1f} ± {want.std(ddof=1):.1f} |") in out
  want = 100 * np.asarray(lin)
  row = [l for l in out.splitlines() if l.startswith("| SimCLR")][0]
  assert row.split(" | ")[4] == f"{want.mean():.1f} ± {want.std(ddof=1):.1f}"
  assert "| linear probe | - | - | - | - |" in out  # absent everywhere
  assert results_table.cell([0.5]) == "50.0"
  assert results_table.cell([None]) == "-"
