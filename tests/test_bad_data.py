"""Image folders with broken, unusual or missing files: clear errors or skips.

References are PIL's own decoding (`Image.convert('RGB')`) of the same
lossless PNG files, independent of TensorFlow's decoders.
"""

import io
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from simclr_jax import data
from simclr_jax.data import sources

pytestmark = pytest.mark.quick

CLASSES = ("ant", "bee")


def _cfg(root, **overrides):
  cfg = ml_collections.ConfigDict(dict(
      source="folder", name="", data_dir=str(root), train_split="train",
      eval_split="test", image_key="image", label_key="label", image_size=8,
      shuffle_buffer=16, cache=True, digits_test_fraction=0.2,
      digits_split_seed=0, skip_corrupt=False))
  cfg.update(overrides)
  return cfg


def _aug():
  return ml_collections.ConfigDict(dict(
      num_views=2, crop_area_min=0.08, crop_area_max=1.0, aspect_min=3 / 4,
      aspect_max=4 / 3, flip_prob=0.5, color_strength=0.5, color_prob=0.8,
      grayscale_prob=0.2, blur=False, blur_prob=0.5, blur_sigma_min=0.1,
      blur_sigma_max=2.0, blur_kernel_frac=0.1, eval_crop_proportion=1.0))


def _png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, format="PNG")


def _good_folder(root, per_class=3):
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for name in CLASSES:
      for k in range(per_class):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        _png(os.path.join(root, split, name, f"{k}.png"),
             Image.fromarray(pixels))


def _encoded(image, fmt):
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


@pytest.fixture()
def broken(tmp_path):
  """A folder with one garbage file and one truncated JPEG in train."""
  _good_folder(tmp_path)
  garbage = tmp_path / "train" / "ant" / "garbage.png"
  garbage.write_bytes(b"this is not a png at all" * 10)
  rng = np.random.default_rng(1)
  jpeg = _encoded(Image.fromarray(
      rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "JPEG")
  truncated = tmp_path / "train" / "bee" / "truncated.jpg"
  truncated.write_bytes(jpeg[:len(jpeg) // 2])
  return tmp_path, str(garbage), str(truncated)


@pytest.mark.parametrize("cache", [True, False])
def test_corrupt_and_truncated_files_are_named(broken, cache):
  root, garbage, truncated = broken
  with pytest.raises(ValueError) as err:
    sources.load_table(_cfg(root, cache=cache), "train", 0, 1)
  message = str(err.value)
  assert "2 image file(s) cannot be decoded" in message
  assert garbage in message and truncated in message
  assert "data.skip_corrupt=True" in message
  with pytest.raises(ValueError, match="cannot be decoded"):
    next(data.make_pretrain_iterator(_cfg(root, cache=cache), _aug(), 2, 0,
                                     process_index=0, process_count=1))


@pytest.mark.parametrize("cache", [True, False])
def test_skip_corrupt_skips_and_counts(broken, cache, caplog):
  root, garbage, truncated = broken
  cfg = _cfg(root, cache=cache, skip_corrupt=True)
  with caplog.at_level(logging.WARNING):
    table = sources.load_table(cfg, "train", 0, 1)
  assert len(table) == 6  # 2 classes x 3 good files
  # The skipped files are no examples of the split: every count agrees.
  labels = sources.load_labels(cfg, "train")
  assert len(labels) == 6
  assert sources.dataset_info(cfg).num_examples["train"] == 6
  np.testing.assert_array_equal(table.labels, labels[table.ids])
  log = caplog.text
  assert "skipped 2 of 8 image files" in log
  assert garbage in log and truncated in log
  batch = next(data.make_pretrain_iterator(cfg, _aug(), 2, 0, process_index=0,
                                           process_count=1))
  assert np.all(np.isfinite(batch["images"]))


def test_skipped_files_are_not_evaluated(broken):
  root, _, _ = broken
  os.rename(root / "train", root / "good")
  os.rename(root / "test", root / "train")
  os.rename(root / "good", root / "test")  # the broken split is now 'test'
  cfg = _cfg(root, skip_corrupt=True)
  masks = [b["mask"] for b in data.make_eval_iterator(cfg, _aug(), "test", 4)]
  assert int(np.sum(np.concatenate(masks))) == 6


def test_grayscale_rgba_palette_become_rgb(tmp_path):
  rng = np.random.default_rng(2)
  rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  base = Image.fromarray(rgb)
  images = {
      "0_gray.png": base.convert("L"),
      "1_gray_alpha.png": base.convert("LA"),
      "2_rgba.png": Image.fromarray(np.dstack(
          [rgb, rng.integers(0, 256, (8, 8), dtype=np.uint8)]), "RGBA"),
      "3_palette.png": base.convert("P", palette=Image.Palette.ADAPTIVE,
                                    colors=16),
      "4_rgb.png": base,
  }
  for split in ("train", "test"):
    for name, image in images.items():
      _png(os.path.join(tmp_path, split, "only", name), image)
  table = sources.load_table(_cfg(tmp_path), "test", 0, 1)
  assert table.kind == "pixels" and table.data.shape == (5, 8, 8, 3)
  for row, name in enumerate(sorted(images)):
    with Image.open(os.path.join(tmp_path, "test", "only", name)) as im:
      want = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(table.data[row], want, err_msg=name)
  # The same through the streamed path (decoded per step in tf.data).
  cfg = _cfg(tmp_path, cache=False)
  got = next(data.make_eval_iterator(cfg, _aug(), "test", 5))["images"]
  np.testing.assert_allclose(got, table.data / 255.0, atol=1e-6)


def test_empty_class_folder(tmp_path):
  _good_folder(tmp_path)
  os.makedirs(tmp_path / "train" / "cow")
  (tmp_path / "train" / "cow" / "readme.txt").write_text("no images")
  with pytest.raises(ValueError) as err:
    data.dataset_info(_cfg(tmp_path))
  assert os.path.join(str(tmp_path), "train", "cow") in str(err.value)
  assert "holds no images" in str(err.value)


def test_split_without_class_folders_or_images(tmp_path):
  _good_folder(tmp_path)
  os.makedirs(tmp_path / "empty_train")
  with pytest.raises(ValueError, match="no class sub-directories in"):
    data.dataset_info(_cfg(tmp_path, train_split="empty_train"))
  os.makedirs(tmp_path / "empty_test")
  with pytest.raises(ValueError) as err:
    data.dataset_info(_cfg(tmp_path, eval_split="empty_test"))
  assert "no images in" in str(err.value) and "empty_test" in str(err.value)
