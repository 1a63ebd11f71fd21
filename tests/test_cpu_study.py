"""`simclr_jax.tools.cpu_study`: the grid's command lines and the report."""

import numpy as np
import pytest

from simclr_jax.tools import cpu_study

pytestmark = pytest.mark.quick


def test_entries_name_their_architecture_and_overrides():
  name, overrides = cpu_study._entry("s3-16", 300,
                                     **{"loss.temperature": 0.1})
  assert name == "s3-16 300 steps temperature=0.1"
  assert overrides == ["--config.model.stage_sizes=(1,1,1)",
                       "--config.model.base_widths=(16,32,64)",
                       "--config.train.steps=300",
                       "--config.loss.temperature=0.1"]
  for grid in cpu_study.GRIDS.values():  # every name is unique in its grid
    assert len({n for n, _ in grid}) == len(grid)


def test_csv_round_trip_and_summary_against_numpy(tmp_path):
  rows = [dict(data="digits", name="a", seed=s, steps=300, minutes=m,
               train_seconds=100.0, knn=k, linear_probe=p)
          for s, m, k, p in ((0, 2.5, 0.95, 0.97), (1, 2.7, 0.96, 0.98),
                             (2, 2.6, 0.99, 0.99))]
  rows.append(dict(data="digits", name="b", seed=0, steps=170, minutes=4.0,
                   train_seconds=200.0, knn=0.9, linear_probe=0.92))
  for row in rows:
    cpu_study.append_row(str(tmp_path), row)
  back = cpu_study.read_rows(str(tmp_path))
  assert [r["name"] for r in back] == ["a", "a", "a", "b"]
  a, b = cpu_study.summarize(back)
  knn = 100 * np.array([0.95, 0.96, 0.99])
  assert a["seeds"] == 3 and a["steps"] == 300
  assert a["knn"] == pytest.approx(knn.mean(), abs=1e-9)
  assert a["knn_sd"] == pytest.approx(knn.std(ddof=1), abs=1e-9)
  assert a["minutes"] == pytest.approx(2.6, abs=1e-9)
  assert b["seeds"] == 1 and b["knn_sd"] == 0.0
  text = cpu_study.table([a, b])
  assert "| digits | a | 3 | 2.6 ± 0.1 | 96.7 ± 2.1 | 98.0 ± 1.0 |" in text
  assert "| digits | b | 1 | 4.0 | 90.0 | 92.0 |" in text


def _agreement_module():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "launch",
                      "neighbour_agreement.py")
  spec = importlib.util.spec_from_file_location("neighbour_agreement", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_neighbour_agreement_by_hand(tmp_path, capsys):
  agreement = _agreement_module()
  # Four points on the unit circle at 0, 10, 90 and 100 degrees, labels
  # a a b a. Nearest other point (cosine): 0->10 (a=a), 10->0 (a=a),
  # 90->100 (b!=a), 100->90 (a!=b): 1-NN agreement 2/4. Two nearest:
  # 0->{10, 90}: 1 of 2; 10->{0, 90}: 1; 90->{100, 10}: 0; 100->{90, 10}: 1;
  # 3 of 8.
  deg = np.radians([0.0, 10.0, 90.0, 100.0])
  # Lengths differ: the cosine, not the distance, decides.
  x = np.stack([np.cos(deg), np.sin(deg)], 1) * np.array([[1], [3], [2],
                                                          [0.5]])
  labels = np.array(["a", "a", "b", "a"])
  assert agreement.agreement(x, labels, [1, 2]) == {1: 0.5, 2: 0.375}
  paths = np.array([f"{i}.png" for i in range(4)])
  np.savez(tmp_path / "e.npz", embeddings=x.astype(np.float32), paths=paths)
  (tmp_path / "l.csv").write_text(
      "path,label\n" + "".join(f"{p},{l}\n" for p, l in zip(paths, labels)))
  assert agreement.main([str(tmp_path / "e.npz"), str(tmp_path / "l.csv"),
                         "--k", "1", "2"]) == 0
  assert capsys.readouterr().out.splitlines() == [
      "1 nearest: 50.0% share the image's label (4 images)",
      "2 nearest: 37.5% share the image's label (4 images)"]
  (tmp_path / "l.csv").write_text("path,label\n0.png,a\n")
  assert agreement.main([str(tmp_path / "e.npz"),
                         str(tmp_path / "l.csv")]) == 2
  assert "3 embedded paths have no label" in capsys.readouterr().err
