r"""Augmentation preview: what the training pipeline does to a few images.

  python -m simclr_jax.preview --config=configs/digits.py --out=views.png

Takes `viz.preview_images` images of the training split (one per class first,
for variety), and draws a grid: the image as the network sees it at
evaluation (centre crop + resize) in the first column, then
`viz.preview_views` views made by `data.augment.preprocess_pretrain` with
seeds split exactly as `data.make_pretrain_iterator` splits them. Too strong a
crop or colour distortion is visible here before it ruins a run.
"""

import math
import os
from typing import Any, Dict, Optional, Tuple

import ml_collections
import numpy as np

from simclr_jax import config as config_lib
# The data package first: it imports TensorFlow with its start-up lines
# filtered and hides the accelerators from it.
from simclr_jax.data import augment
from simclr_jax.data import sources
import tensorflow as tf  # pylint: disable=g-bad-import-order

# Layout of the grid, in pixels: gaps between tiles, and a wider gap that
# separates the original column from the views.
GAP_PX = 2
ORIGINAL_GAP_PX = 6
GAP_VALUE = 255  # white separators


def _pick_rows(labels: np.ndarray, k: int) -> np.ndarray:
  """First example of each class in order, then the next ones, up to k rows."""
  if k > len(labels):
    config_lib.fail("viz.preview_images", k, "the training split has only "
                    f"{len(labels)} examples")
  _, first = np.unique(labels, return_index=True)
  first = first[:k]  # ordered by class
  rest = np.setdiff1d(np.arange(len(labels)), first)[:k - len(first)]
  return np.concatenate([first, rest]).astype(np.int64)


def _to_float(image: tf.Tensor) -> tf.Tensor:
  # Same conversion as the input pipeline: uint8 -> [0, 1], floats unchanged.
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.cast(image, tf.float32)


def source_images(data_cfg: Any, k: int) -> Tuple[list, np.ndarray]:
  """Decoded training-split images as the pipeline reads them.

  Args:
    data_cfg: the `config.data` ConfigDict.
    k: number of images.

  Returns:
    (images, labels): a list of k float32 [H, W, 3] tensors in [0, 1] (sizes
    may differ) and their int labels.
  """
  split = data_cfg.train_split
  if sources.is_random_access(data_cfg):
    table = sources.load_table(data_cfg, split, 0, 1)
    rows = _pick_rows(table.labels, k)
    images = []
    for row in rows:
      item = table.data[row]
      if table.kind == "pixels":
        image = tf.constant(item)
      else:
        raw = tf.io.read_file(item) if table.kind == "paths" else tf.constant(
            item)
        image = sources.decode_image(raw)
      images.append(_to_float(image))
    return images, np.asarray(table.labels[rows])
  # Streamed TFDS: the first k records in canonical order.
  ds = sources.tfds_records(data_cfg, sources.tfds_builder(data_cfg), split,
                            ordered=True).take(k)
  images, labels = [], []
  for encoded, label in ds:
    images.append(_to_float(sources.decode_image(encoded)))
    labels.append(int(label))
  if len(images) < k:
    config_lib.fail("viz.preview_images", k, "the training split has only "
                    f"{len(images)} examples")
  return images, np.asarray(labels)


def preview_views(config: ml_collections.ConfigDict
                  ) -> Dict[str, np.ndarray]:
  """Originals and augmented views of `viz.preview_images` training images.

  Args:
    config: the full configuration (data, aug, viz, seed).

  Returns:
    {'originals': float32 [K, S, S, 3], 'views': float32 [K, V, S, S, 3],
    'labels': int [K]}, all images in [0, 1] at S = data.image_size.
  """
  for field in ("preview_images", "preview_views", "preview_tile_px"):
    if int(config.viz[field]) < 1:
      config_lib.fail(f"viz.{field}", config.viz[field], "must be >= 1")
  augment.check_aug_config(config.aug)
  sources.check_data_config(config.data)
  k, v = int(config.viz.preview_images), int(config.viz.preview_views)
  size = int(config.data.image_size)
  images, labels = source_images(config.data, k)
  base = tf.constant([int(config.seed), 0], tf.int64)
  originals, views = [], []
  for i, image in enumerate(images):
    originals.append(augment.preprocess_eval(
        image, size, float(config.aug.eval_crop_proportion)))
    # One key per image, split into one key per view, as the pipeline does.
    key = tf.random.experimental.stateless_fold_in(base, i)
    keys = tf.random.experimental.stateless_split(key, v)
    views.append(tf.stack([augment.preprocess_pretrain(image, keys[j], size,
                                                       config.aug)
                           for j in range(v)]))
  return {"originals": np.stack([o.numpy() for o in originals]),
          "views": np.stack([x.numpy() for x in views]),
          "labels": labels}


def tile_scale(image_size: int, tile_px: int) -> int:
  """Integer upscaling factor so that a tile is at least `tile_px` wide."""
  return max(1, math.ceil(tile_px / image_size))


def grid_shape(num_images: int, num_views: int, image_size: int,
               tile_px: int) -> Tuple[int, int]:
  """(height, width) in pixels of the preview grid.

  Args:
    num_images: rows.
    num_views: augmented views per row (the original adds one column).
    image_size: side of one image before upscaling.
    tile_px: minimum tile side (see `tile_scale`).

  Returns:
    The grid's (height, width).
  """
  tile = image_size * tile_scale(image_size, tile_px)
  height = num_images * tile + (num_images + 1) * GAP_PX
  width = (num_views + 1) * tile + (num_views + 1) * GAP_PX + ORIGINAL_GAP_PX
  return height, width


def make_grid(originals: np.ndarray, views: np.ndarray,
              tile_px: int) -> np.ndarray:
  """Lays out originals (first column) and their views as one uint8 image.

  Args:
    originals: float [K, S, S, 3] in [0, 1].
    views: float [K, V, S, S, 3] in [0, 1].
    tile_px: minimum tile side; tiles are upscaled by nearest neighbour.

  Returns:
    uint8 [H, W, 3] with H, W from `grid_shape`.
  """
  k, v, size = views.shape[0], views.shape[1], views.shape[2]
  scale = tile_scale(size, tile_px)
  tile = size * scale
  height, width = grid_shape(k, v, size, tile_px)
  grid = np.full((height, width, 3), GAP_VALUE, np.uint8)

  def to_tile(image):
    image = np.clip(np.asarray(image, np.float64), 0.0, 1.0)
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    return np.round(image * 255).astype(np.uint8)

  for r in range(k):
    top = GAP_PX + r * (tile + GAP_PX)
    row = [originals[r]] + [views[r, j] for j in range(v)]
    for c, image in enumerate(row):
      left = GAP_PX + c * (tile + GAP_PX) + (ORIGINAL_GAP_PX if c else 0)
      grid[top:top + tile, left:left + tile] = to_tile(image)
  return grid


def preview_grid(config: ml_collections.ConfigDict) -> np.ndarray:
  """The augmentation preview of `config` as a uint8 [H, W, 3] image."""
  out = preview_views(config)
  return make_grid(out["originals"], out["views"],
                   int(config.viz.preview_tile_px))


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 [H, W, 3] image as PNG atomically (tmp file + rename).

  Args:
    path: destination file; its directory is created.
    image: the pixels.

  Returns:
    The path written.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
  os.replace(tmp, path)
  return path


def write_preview(config: ml_collections.ConfigDict, writer: Any,
                  out_path: Optional[str], step: int = 0) -> np.ndarray:
  """Writes the preview grid to TensorBoard and, if given, to a PNG.

  Args:
    config: the full configuration.
    writer: a clu MetricWriter (or None); receives image 'augmentations'.
    out_path: PNG destination, or None.
    step: TensorBoard step of the image.

  Returns:
    The grid, uint8 [H, W, 3].
  """
  grid = preview_grid(config)
  if writer is not None:
    writer.write_images(step, {"augmentations": grid[None]})
  if out_path:
    save_png(out_path, grid)
  return grid
