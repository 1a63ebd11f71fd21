"""Image folders with and without labels, held-out splits, any aspect ratio.

The references are the files the tests write (listed independently with
os.walk) and plain NumPy slicing of the images.
"""

import logging as py_logging
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import folder as folder_config
from simclr_jax import api
from simclr_jax import config as config_lib
from simclr_jax import data
from simclr_jax import modes
from simclr_jax.data import folders
from simclr_jax.engine import loop
from simclr_jax.engine import resolve

FORMATS = ("png", "jpg", "webp", "bmp")


def _cfg(root, **overrides):
  cfg = folder_config.get_config("tiny").data
  cfg.data_dir = str(root)
  cfg.update(overrides)
  return cfg


def _write(path, h, w, seed, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
  fmt = fmt or os.path.splitext(path)[1][1:]
  kwargs = {"lossless": True} if fmt == "webp" else {}
  Image.fromarray(pixels).save(path, **kwargs)
  return pixels


def _tree(root, nested):
  """20 images of odd sizes in four formats, one name with a space."""
  for i in range(20):
    sub = ("", "a", "a/b c")[i % 3] if nested else ""
    name = f"im {i}.{FORMATS[i % 4]}" if i % 7 == 0 else f"im{i}.{FORMATS[i % 4]}"
    _write(os.path.join(root, sub, name), 9 + i, 31 - i, i)


def _walk(root):
  """Every image file under root, relative, by an independent listing."""
  found = []
  for d, _, files in os.walk(root):
    found += [os.path.relpath(os.path.join(d, f), root) for f in files]
  return sorted(found)


@pytest.mark.quick
@pytest.mark.parametrize("nested", [False, True])
def test_unlabelled_tree_is_detected_and_held_out(tmp_path, nested, caplog):
  _tree(tmp_path, nested)
  cfg = _cfg(tmp_path)
  with caplog.at_level(py_logging.INFO):
    info = data.dataset_info(cfg)
  assert not info.labelled and info.num_classes == 0 and info.has_eval
  assert "unlabelled: no class sub-folders (detected)" in caplog.text
  train, y_train = folders.split_files(cfg, "train")
  held, _ = folders.split_files(cfg, "test")
  assert len(held) == 2 and len(train) == 18  # round(0.1 * 20)
  rel = sorted(os.path.relpath(p, tmp_path) for p in train + held)
  assert rel == _walk(tmp_path)
  assert not set(train) & set(held)
  np.testing.assert_array_equal(y_train, 0)
  # Seeded: the same seed holds out the same images, another seed others.
  folders._resolve.cache_clear()
  assert folders.split_files(cfg, "test")[0] == held
  other = _cfg(tmp_path, holdout_seed=1)
  assert folders.split_files(other, "test")[0] != held


@pytest.mark.quick
def test_labelled_folders_without_a_test_folder(tmp_path):
  for c in ("cat", "dog"):
    for k in range(5):
      _write(os.path.join(tmp_path, "train", c, f"{k}.png"), 8, 8, k)
  cfg = _cfg(tmp_path, holdout_fraction=0.2)
  info = data.dataset_info(cfg)
  assert info.labelled and info.num_classes == 2
  assert info.num_examples == {"train": 8, "test": 2}
  # Forcing the other reading: every image of the tree, label 0.
  info = data.dataset_info(_cfg(tmp_path, folder_labels="none"))
  assert not info.labelled and sum(info.num_examples.values()) == 10


@pytest.mark.quick
def test_forcing_class_folders_on_a_flat_folder_is_one_clear_error(tmp_path):
  _tree(tmp_path, nested=False)
  with pytest.raises(config_lib.ConfigError,
                     match="no class sub-directories in"):
    data.dataset_info(_cfg(tmp_path, folder_labels="subfolders"))
  with pytest.raises(config_lib.ConfigError, match="data.folder_labels"):
    data.dataset_info(_cfg(tmp_path, folder_labels="classes"))


@pytest.mark.quick
def test_no_holdout_means_no_eval_split_and_evaluations_off(tmp_path, caplog):
  _tree(tmp_path, nested=False)
  config = folder_config.get_config("tiny")
  config.data.data_dir = str(tmp_path)
  config.data.holdout_fraction = 0.0
  info = data.dataset_info(config.data)
  assert not info.has_eval and info.num_examples == {"train": 20}
  with caplog.at_level(py_logging.INFO):
    config, _ = loop.resolve_config(modes.get("pretrain"), config)
  assert "resolved: train.probe True -> False" in caplog.text
  assert not config.train.probe and config.eval.evaluators == ()
  # A mode that needs an eval split says so before anything is built.
  facts = resolve.DataFacts(num_train=20, num_eval=None, labelled=False)
  with pytest.raises(config_lib.ConfigError, match="needs labelled data"):
    resolve.resolve(modes.get("linear_eval"), config, facts)


@pytest.mark.quick
def test_unlabelled_pretraining_turns_label_evals_off(tmp_path, caplog):
  _tree(tmp_path, nested=True)
  config = folder_config.get_config("tiny")
  config.data.data_dir = str(tmp_path)
  config.train.global_batch = 64  # more than the 18 training images
  with caplog.at_level(py_logging.INFO):
    config, _ = loop.resolve_config(modes.get("pretrain"), config)
  assert not config.train.probe
  assert config.eval.evaluators == ("signals", "pictures")
  assert ("resolved: eval.evaluators ('classifier', 'knn', 'pictures') -> "
          "('signals', 'pictures')") in caplog.text
  # data.fit_sizes: the batch fits the data and the device count.
  assert config.train.global_batch == 16
  assert "resolved: train.global_batch 64 -> 16" in caplog.text


@pytest.mark.quick
def test_evaluation_crop_keeps_the_aspect_ratio(tmp_path):
  """A 40 x 160 image evaluates as its central 40 x 40 square."""
  tall = _write(os.path.join(tmp_path, "test", "wide.png"), 40, 160, 0)
  _write(os.path.join(tmp_path, "train", "x.png"), 40, 40, 1)
  _write(os.path.join(tmp_path, "train", "y.png"), 40, 40, 2)
  cfg = _cfg(tmp_path, image_size=40)
  aug = folder_config.get_config().aug
  got = next(data.make_eval_iterator(cfg, aug, "test", 1, 0, 1))["images"][0]
  want = tall[:, 60:100].astype(np.float32) / 255.0
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(api.preprocess(tall, 40, 1.0), want, atol=1e-6)


@pytest.mark.parametrize("shape,size,crop", [((40, 160), 16, 1.0),
                                             ((300, 260), 224, 0.875),
                                             ((37, 23), 32, 1.0),
                                             ((12, 50), 32, 0.875)])
def test_numpy_preprocessing_equals_the_tf_data_evaluation(shape, size, crop):
  image = np.random.default_rng(0).integers(0, 256, shape + (3,), np.uint8)
  want = data.preprocess_eval(tf.image.convert_image_dtype(image, tf.float32),
                              size, crop).numpy()
  got = api.preprocess(image, size, crop)
  assert got.shape == (size, size, 3)
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.quick
def test_every_format_decodes_in_the_folder_source(tmp_path):
  want = {}
  for i, fmt in enumerate(("png", "webp", "bmp")):
    want[f"{i}.{fmt}"] = _write(os.path.join(tmp_path, "train", f"{i}.{fmt}"),
                                6, 6, i)
  cfg = _cfg(tmp_path, eval_split="train", image_size=6)
  aug = folder_config.get_config().aug
  got = next(data.make_eval_iterator(cfg, aug, "train", 3, 0, 1))["images"]
  for row, name in enumerate(sorted(want)):
    np.testing.assert_allclose(got[row], want[name] / 255.0, atol=1e-6)


@pytest.mark.quick
def test_fit_sizes_only_with_the_flag():
  config = folder_config.get_config()
  config.data.data_dir = "a/folder"  # only its facts are read here
  config.data.fit_sizes = False
  facts = resolve.DataFacts(num_train=20, num_eval=2, labelled=True,
                            num_devices=8)
  pretrain = modes.get("pretrain")
  with pytest.raises(config_lib.ConfigError, match="train.global_batch"):
    resolve.resolve(pretrain, config, facts)
  config.data.fit_sizes = True
  config = resolve.resolve(pretrain, config, facts)
  assert config.train.global_batch == 16
  assert 0 < config.viz.tsne_perplexity < 2
  with pytest.raises(AttributeError):  # frozen: nothing changes it later
    config.train.global_batch = 8
  ml_collections.ConfigDict(config.to_dict())  # still a plain config


@pytest.mark.quick
def test_a_tree_at_the_root_skips_only_the_eval_folder(tmp_path):
  """ROOT/test is the eval split; ROOT/test2 is training data like any other."""
  for i, sub in enumerate(("", "test", "test2", "test2")):
    _write(os.path.join(tmp_path, sub, f"{i}.png"), 8, 8, i)
  cfg = _cfg(tmp_path)
  train, _ = folders.split_files(cfg, "train")
  held, _ = folders.split_files(cfg, "test")
  assert sorted(os.path.relpath(p, tmp_path) for p in train) == [
      "0.png", os.path.join("test2", "2.png"), os.path.join("test2", "3.png")]
  assert [os.path.relpath(p, tmp_path) for p in held] == [
      os.path.join("test", "1.png")]


@pytest.mark.quick
def test_a_single_image_array_is_refused_with_the_fix():
  image = np.zeros((20, 30, 3), np.uint8)
  encoder = api.Encoder.__new__(api.Encoder)  # preprocess needs no model
  encoder.image_size, encoder.crop_proportion = 8, 1.0
  with pytest.raises(ValueError, match="image\\[None\\]"):
    encoder.preprocess(image)
  assert encoder.preprocess(image[None]).shape == (1, 8, 8, 3)
  assert encoder.preprocess([image, image[:10]]).shape == (2, 8, 8, 3)
