"""Augmentation preview, embedding map, similarity heatmap and their summaries.

The pictures of a short digits pretraining are checked as images: pixel size,
non-blank content, the heatmap's positive-pair cells brighter than the rest,
and the same images read back from the TensorBoard event files.
"""

import glob
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import digits
from simclr_jax.data import preview
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import pictures
from simclr_jax.exports import format as export_lib
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain
from simclr_jax.tools import visualize
from simclr_jax.viz import plots

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_STD = 20.0  # grey levels: a blank or flat image has ~0
STEPS = 40


def _png(path):
  return np.asarray(Image.open(path).convert("RGB"), np.float64)


def _luminance(rgb):
  return rgb @ np.array([0.299, 0.587, 0.114])


def _config():
  config = digits.get_config("tiny")
  config.train.steps = STEPS
  config.train.eval_every_steps = STEPS // 2
  config.train.checkpoint_every_steps = STEPS
  config.train.probe = False
  # A few steps must already pull the views of an image together.
  config.optim.name = "adamw"
  config.optim.base_lr = 3e-3
  config.optim.lr_scaling = "none"
  # Milder views than the recipe (no colour jitter, larger crops): the test is
  # about the picture, and 40 steps of the tiny model then already pull the
  # two views of an image together.
  config.aug.color_prob = 0.0
  config.aug.crop_area_min = 0.5
  config.eval.evaluators = ("knn", "pictures")  # tiny has no pictures
  config.viz.tsne_points = 200
  config.viz.figure_px = 400
  return config


# ------------------------------------------------------------ pure parts ---


@pytest.mark.quick
def test_similarity_matrix_matches_float64_reference():
  rng = np.random.default_rng(0)
  n, v, d = 3, 3, 5
  z = rng.normal(size=(n, v, d)).astype(np.float32)
  sim = pictures.similarity_matrix(z)
  ref = np.zeros((v * n, v * n))
  for a in range(v):
    for i in range(n):
      for b in range(v):
        for j in range(n):
          x, y = z[i, a].astype(np.float64), z[j, b].astype(np.float64)
          ref[a * n + i, b * n + j] = x @ y / np.sqrt((x @ x) * (y @ y))
  np.testing.assert_allclose(sim, ref, atol=1e-6)
  # Two images, two views: positives on the off-diagonals at offset N = 2.
  expected = np.array([[0, 0, 1, 0], [0, 0, 0, 1],
                       [1, 0, 0, 0], [0, 1, 0, 0]], bool)
  np.testing.assert_array_equal(pictures.positive_mask(2, 2), expected)


@pytest.mark.quick
def test_grid_layout_places_upscaled_tiles():
  rng = np.random.default_rng(1)
  k, v, s, tile_px = 2, 3, 4, 10  # scale ceil(10 / 4) = 3 -> 12 px tiles
  originals = rng.uniform(size=(k, s, s, 3))
  views = rng.uniform(size=(k, v, s, s, 3))
  grid = preview.make_grid(originals, views, tile_px)
  gap, extra = preview.GAP_PX, preview.ORIGINAL_GAP_PX
  assert grid.shape == (k * 12 + (k + 1) * gap,
                        (v + 1) * 12 + (v + 1) * gap + extra, 3)
  assert preview.grid_shape(k, v, s, tile_px) == grid.shape[:2]
  for r in range(k):
    top = gap + r * (12 + gap)
    for c in range(v + 1):
      left = gap + c * (12 + gap) + (extra if c else 0)
      image = originals[r] if c == 0 else views[r, c - 1]
      want = np.round(np.kron(image, np.ones((3, 3, 1))) * 255)
      np.testing.assert_array_equal(grid[top:top + 12, left:left + 12], want)


@pytest.mark.quick
def test_bad_viz_config_is_rejected():
  config = digits.get_config("tiny")
  config.viz.heatmap_batch = 12
  with pytest.raises(ValueError, match=r"config.viz.heatmap_batch=12 .*devices"):
    pictures.check_viz_config(config.viz, 8)
  config = digits.get_config("tiny")
  config.viz.tsne_perplexity = 5000.0
  with pytest.raises(ValueError, match="config.viz.tsne_perplexity=5000.0"):
    pictures.check_viz_config(config.viz)
  config = digits.get_config("tiny")
  config.viz.embedding_method = "pca"
  with pytest.raises(ValueError, match="config.viz.embedding_method='pca'"):
    pictures.check_viz_config(config.viz)


# ------------------------------------------------------------- commands ---


@pytest.mark.quick
def test_preview_command_writes_original_and_distinct_views(tmp_path):
  out = str(tmp_path / "views.png")
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax.preview",
       "--config=configs/digits.py", f"--out={out}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  grid = _png(out)
  # digits: 8 rows of 16 px images upscaled x4, original + 6 views per row.
  gap, extra, tile = preview.GAP_PX, preview.ORIGINAL_GAP_PX, 64
  assert grid.shape == (8 * tile + 9 * gap, 7 * tile + 7 * gap + extra, 3)
  assert grid.std() > MIN_STD
  # The first column is the first training digit of each class, as stored.
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  table = sources.load_table(digits.get_config().data, "train", 0, 1)
  firsts = [np.flatnonzero(table.labels == c)[0] for c in range(8)]
  for r in range(8):
    top = gap + r * (tile + gap)
    original = grid[top:top + tile, gap:gap + tile]
    want = np.kron(table.data[firsts[r]], np.ones((4, 4, 1))) * 255
    np.testing.assert_allclose(original, want, atol=1.0)
    for c in range(1, 7):
      left = gap + c * (tile + gap) + extra
      view = grid[top:top + tile, left:left + tile]
      assert np.abs(view - original).mean() > 5.0, (r, c)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pictures_run"))
  pretrain.run(_config(), workdir)
  return workdir


def test_pretraining_writes_pictures(digits_run):
  pics = os.path.join(digits_run, pictures.PICTURES_SUBDIR)
  names = sorted(os.listdir(pics))
  half = STEPS // 2
  assert names == sorted([
      "augmentations.png", f"embedding_map_step{half}.png",
      f"embedding_map_step{STEPS}.png", f"similarity_heatmap_step{half}.png",
      f"similarity_heatmap_step{STEPS}.png"])
  for name in names:
    image = _png(os.path.join(pics, name))
    if name != "augmentations.png":
      assert image.shape == (400, 400, 3), name
    assert image.std() > MIN_STD, name


def test_heatmap_positive_pairs_are_brighter(digits_run):
  image = _png(os.path.join(digits_run, pictures.PICTURES_SUBDIR,
                            f"similarity_heatmap_step{STEPS}.png"))
  n, v = 32, 2
  left, top, width, height = plots.heatmap_box(image.shape[0])
  centres = (np.arange(n * v) + 0.5) / (n * v)
  rows = np.floor(top + centres * height).astype(int)
  cols = np.floor(left + centres * width).astype(int)
  cells = _luminance(image)[np.ix_(rows, cols)]
  pos = np.zeros((n * v, n * v), bool)
  for i in range(n):  # image i's two views: rows i and n + i
    pos[i, n + i] = pos[n + i, i] = True
  other = ~pos & ~np.eye(n * v, dtype=bool)
  assert cells[np.eye(n * v, dtype=bool)].min() > cells[other].max() - 1
  assert cells[pos].mean() > cells[other].mean() + 10.0


def _image_summaries(directory):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  found = {}
  for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          # TF2 image summaries: [width, height, png, ...] as a string tensor.
          blobs = tf.make_ndarray(value.tensor)
          png = Image.open(io.BytesIO(blobs[2]))
          found[(value.tag, event.step)] = (int(blobs[0]), int(blobs[1]),
                                            png.size)
  return found


def test_tensorboard_holds_the_images(digits_run):
  found = _image_summaries(digits_run)
  grid_h, grid_w = preview.grid_shape(8, 6, 16, 64)
  assert found[("augmentations", 0)] == (grid_w, grid_h, (grid_w, grid_h))
  for step in (STEPS // 2, STEPS):
    for tag in ("embedding_map", "similarity_heatmap"):
      assert found[(tag, step)] == (400, 400, (400, 400)), (tag, step)


def test_export_pictures(tmp_path):
  config = _config()
  model_cfg = model_config(config)
  from simclr_jax.models import build_model  # pylint: disable=g-import-not-at-top
  variables = state_lib.init_variables(build_model(model_cfg, 10), 16, 0)
  export = str(tmp_path / "export")
  export_lib.save_export(export, variables, model_cfg, 10, 16,
                         extra={"step": 7})
  out_dir = str(tmp_path / "pictures")
  paths = visualize.run_on_saved(config, out_dir, export_dir=export)
  assert sorted(os.path.basename(p) for p in paths.values()) == [
      "embedding_map_step7.png", "similarity_heatmap_step7.png"]
  for path in paths.values():
    image = _png(path)
    assert image.shape == (400, 400, 3) and image.std() > MIN_STD
  found = _image_summaries(out_dir)
  assert set(found) == {("embedding_map", 7), ("similarity_heatmap", 7)}


def test_run_pictures_from_workdir(digits_run, tmp_path):
  out_dir = str(tmp_path / "again")
  paths = visualize.run_on_saved(_config(), out_dir, workdir=digits_run)
  # The newest checkpoint's pictures equal those written during training.
  for name, path in paths.items():
    assert os.path.basename(path) == f"{name}_step{STEPS}.png"
    if name == "similarity_heatmap":
      during = _png(os.path.join(digits_run, pictures.PICTURES_SUBDIR,
                                 os.path.basename(path)))
      np.testing.assert_array_equal(_png(path), during)
  with pytest.raises(ValueError, match="exactly one"):
    visualize.run_on_saved(_config(), out_dir, export_dir="x", workdir="y")
