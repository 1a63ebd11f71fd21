"""Tests of the data sources and the deterministic, sharded pipelines."""

import hashlib
import itertools
import math
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from simclr_jax import data
from simclr_jax.data import sources

TINY_TRAIN, TINY_TEST = 23, 7


def data_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      source="digits", name="", data_dir="", train_split="train",
      eval_split="test", image_key="image", label_key="label", image_size=16,
      shuffle_buffer=64, cache=True, digits_test_fraction=0.2,
      digits_split_seed=0))
  cfg.update(overrides)
  return cfg


def aug_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      num_views=2, crop_area_min=0.08, crop_area_max=1.0, aspect_min=3 / 4,
      aspect_max=4 / 3, flip_prob=0.5, color_strength=0.5, color_prob=0.8,
      grayscale_prob=0.2, blur=False, blur_prob=0.5, blur_sigma_min=0.1,
      blur_sigma_max=2.0, blur_kernel_frac=0.1, eval_crop_proportion=1.0))
  cfg.update(overrides)
  return cfg


def identity_aug() -> ml_collections.ConfigDict:
  """Crop = whole image, no flip: supervised views equal the source images."""
  return aug_config(crop_area_min=1.0, aspect_min=1.0, aspect_max=1.0,
                    flip_prob=0.0)


def reference_digits():
  d = sk_datasets.load_digits()
  tr, te = model_selection.train_test_split(
      np.arange(len(d.target)), test_size=0.2, random_state=0,
      stratify=d.target)
  return d.images / 16.0, d.target, tr, te


def take(it, n):
  return list(itertools.islice(it, n))


def fingerprint(image):
  return hashlib.sha1(np.round(image, 4).tobytes()).hexdigest()


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# ----------------------------------------------------------------- digits ---


@pytest.mark.quick
def test_digits_split_is_fixed_and_stratified():
  cfg = data_config()
  info = data.dataset_info(cfg)
  assert info.num_examples == {"train": 1437, "test": 360}
  assert info.num_classes == 10
  _, target, tr, te = reference_digits()
  np.testing.assert_array_equal(data.load_labels(cfg, "train"), target[tr])
  np.testing.assert_array_equal(data.load_labels(cfg, "test"), target[te])
  np.testing.assert_array_equal(data.load_labels(cfg, "test"),
                                data.load_labels(data_config(), "test"))


@pytest.mark.quick
def test_digits_eval_images_equal_source_in_order():
  # At 8 px with no crop the eval image is the raw digit scaled to [0, 1].
  cfg = data_config(image_size=8)
  images, target, _, te = reference_digits()
  batches = list(data.make_eval_iterator(cfg, aug_config(), "test", 100))
  got = np.concatenate([b["images"] for b in batches])[:360]
  np.testing.assert_allclose(got[..., 1], images[te], atol=1e-5)
  np.testing.assert_array_equal(got[..., 0], got[..., 2])
  labels = np.concatenate([b["labels"] for b in batches])[:360]
  np.testing.assert_array_equal(labels, target[te])


@pytest.mark.quick
def test_pretrain_batches_shapes_and_views():
  it = data.make_pretrain_iterator(data_config(), aug_config(num_views=3), 8,
                                   seed=1)
  batch = next(it)
  assert batch["images"].shape == (8, 3, 16, 16, 3)
  assert batch["images"].dtype == np.float32
  assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (8,)
  assert 0 <= batch["images"].min() and batch["images"].max() <= 1
  assert set(batch["labels"]) <= set(range(10))
  views = batch["images"]
  assert np.all(np.abs(views[:, 0] - views[:, 1]).max(axis=(1, 2, 3)) > 1e-3)


@pytest.mark.quick
def test_resume_yields_the_same_batches():
  cfg, aug = data_config(), aug_config()
  fresh = take(data.make_pretrain_iterator(cfg, aug, 8, seed=3), 5)
  resumed = take(data.make_pretrain_iterator(cfg, aug, 8, seed=3,
                                             start_step=3), 2)
  assert_batches_equal(resumed, fresh[3:5])
  other = next(data.make_pretrain_iterator(cfg, aug, 8, seed=4))
  assert np.abs(other["images"] - fresh[0]["images"]).max() > 1e-2


def _index_of(cfg):
  """Maps an image fingerprint to its train-split index (digits source)."""
  batches = data.make_eval_iterator(cfg, aug_config(), "train", 1437)
  images = next(batches)["images"]
  return {fingerprint(im): i for i, im in enumerate(images)}


@pytest.mark.quick
def test_epochs_permute_the_subset_and_resume_across_epochs():
  cfg = data_config()
  labels = data.load_labels(cfg, "train")
  subset = data.class_balanced_subset(labels, 0.03, seed=0)  # 43 examples
  lookup = _index_of(cfg)
  it = data.make_supervised_iterator(cfg, identity_aug(), 8, seed=0,
                                     indices=subset)
  fresh = take(it, 15)  # 5 steps per epoch (40 of 43 examples used)
  ids = np.array([[lookup[fingerprint(im)] for im in b["images"]]
                  for b in fresh]).reshape(3, 40)
  for epoch in ids:
    assert len(set(epoch)) == 40 and set(epoch) <= set(subset)
  assert not np.array_equal(ids[0], ids[1])
  np.testing.assert_array_equal(
      np.concatenate([b["labels"] for b in fresh]), labels[ids.ravel()])
  resumed = take(data.make_supervised_iterator(
      cfg, identity_aug(), 8, seed=0, start_step=4, indices=subset), 4)
  assert_batches_equal(resumed, fresh[4:8])


@pytest.mark.quick
def test_two_processes_read_disjoint_shards():
  cfg = data_config()
  tables = [sources.load_table(cfg, "train", i, 2) for i in range(2)]
  assert not set(tables[0].ids) & set(tables[1].ids)
  np.testing.assert_array_equal(
      np.sort(np.concatenate([t.ids for t in tables])), np.arange(1437))
  lookup = _index_of(cfg)
  # 24 even and 24 odd indices: 24 per process with strided sharding.
  subset = np.sort(np.concatenate([np.arange(0, 96, 4), np.arange(1, 96, 4)]))
  seen = []
  for i in range(2):
    it = data.make_supervised_iterator(cfg, identity_aug(), 8, seed=0,
                                       indices=subset, process_index=i,
                                       process_count=2)
    batches = take(it, 6)  # one epoch of 24 local examples, batch 4
    assert batches[0]["images"].shape == (4, 16, 16, 3)
    seen.append({lookup[fingerprint(im)] for b in batches
                 for im in b["images"]})
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(subset)
  batch = next(data.make_pretrain_iterator(cfg, aug_config(), 8, seed=0,
                                           process_index=1, process_count=2))
  assert batch["images"].shape == (4, 2, 16, 16, 3)


@pytest.mark.quick
@pytest.mark.parametrize("process_count,global_batch", [(1, 48), (2, 48),
                                                        (3, 33)])
def test_eval_counts_every_example_once(process_count, global_batch):
  cfg = data_config(image_size=8)
  images, target, _, te = reference_digits()
  n_batches = data.num_eval_batches(cfg, "test", global_batch, process_count)
  local = global_batch // process_count
  assert n_batches == math.ceil(math.ceil(360 / process_count) / local)
  labels, found = [], []
  # Raw digits take 17 levels: rounding to them identifies an image exactly.
  key = lambda im: np.rint(im * 16).astype(np.int8).tobytes()
  lookup = {key(im): i for i, im in enumerate(images[te])}
  assert len(lookup) == 360
  for i in range(process_count):
    batches = list(data.make_eval_iterator(
        cfg, aug_config(), "test", global_batch, process_index=i,
        process_count=process_count))
    assert len(batches) == n_batches
    for b in batches:
      assert b["images"].shape == (local, 8, 8, 3)
      labels += list(b["labels"][b["mask"]])
      found += [lookup[key(im[..., 0])] for im in b["images"][b["mask"]]]
      assert np.all(b["images"][~b["mask"]] == 0)
  assert len(found) == 360 and sorted(found) == list(range(360))
  np.testing.assert_array_equal(labels, target[te][found])


@pytest.mark.quick
def test_class_balanced_subset():
  labels = np.repeat([0, 1, 2, 3], [50, 7, 1, 23])
  rng = np.random.default_rng(5)
  labels = labels[rng.permutation(len(labels))]
  idx = data.class_balanced_subset(labels, 0.1, seed=0)
  # Hand-computed: max(1, round(0.1 * n)) for n = 50, 7, 1, 23.
  np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 1, 1, 2])
  assert len(set(idx)) == len(idx)
  np.testing.assert_array_equal(idx, data.class_balanced_subset(labels, 0.1,
                                                                seed=0))
  assert not np.array_equal(idx, data.class_balanced_subset(labels, 0.1,
                                                            seed=1))
  assert len(data.class_balanced_subset(labels, 1.0, seed=0)) == len(labels)
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="fraction"):
      data.class_balanced_subset(labels, bad, seed=0)


# ------------------------------------------------------------------- TFDS ---


class SimclrTestTiny(tfds.core.GeneratorBasedBuilder):
  """Example k is a constant image of value k (so identity views reveal k)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(num_classes=3)})
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, TINY_TRAIN),
            "test": self._generate_examples(100, TINY_TEST)}

  def _generate_examples(self, offset, n):
    for k in range(offset, offset + n):
      yield k, {"image": np.full((8, 8, 3), k, np.uint8), "label": k % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  SimclrTestTiny(data_dir=path).download_and_prepare()
  return path


def _values(batches, key="images"):
  return [int(round(im.flat[0] * 255)) for b in batches for im in b[key]]


@pytest.mark.parametrize("cache", [False, True])
def test_tfds_shards_are_disjoint_and_eval_is_exact(tiny_dir, cache):
  cfg = data_config(source="tfds", name="simclr_test_tiny", data_dir=tiny_dir,
                    image_size=8, cache=cache)
  info = data.dataset_info(cfg)
  assert info.num_examples == {"train": TINY_TRAIN, "test": TINY_TEST}
  assert info.num_classes == 3 and info.image_shape == (8, 8, 3)
  order = data.load_labels(cfg, "train")
  sizes = data.shard_sizes(cfg, "train", 2)
  assert sizes == [12, 11]
  seen = []
  for i in range(2):
    epoch_len = sizes[i] // 4 * 4  # local batch 4, remainder dropped
    batches = take(data.make_supervised_iterator(
        cfg, identity_aug(), 8, seed=0, process_index=i, process_count=2),
                   2 * epoch_len // 4)
    vals = _values(batches)
    first, second = vals[:epoch_len], vals[epoch_len:]
    assert len(set(first)) == len(set(second)) == epoch_len
    assert first != second  # reshuffled each epoch
    for b in batches:
      np.testing.assert_array_equal(b["labels"], np.array(
          [v % 3 for v in _values([b])]))
    seen.append(set(vals))
  assert not seen[0] & seen[1] and seen[0] | seen[1] <= set(range(TINY_TRAIN))
  evals = [list(data.make_eval_iterator(cfg, aug_config(), "train", 10, i, 2))
           for i in range(2)]
  assert len(evals[0]) == len(evals[1]) == 3  # ceil(12 / 5)
  vals = [v for e in evals for b in e for v, m in zip(_values([b]), b["mask"])
          if m]
  assert sorted(vals) == list(range(TINY_TRAIN))
  np.testing.assert_array_equal([v % 3 for v in vals], order)
  resumed = take(data.make_supervised_iterator(
      cfg, aug_config(), 8, seed=2, start_step=3, process_count=1,
      process_index=0), 2)
  fresh = take(data.make_supervised_iterator(
      cfg, aug_config(), 8, seed=2, process_count=1, process_index=0), 5)
  assert_batches_equal(resumed, fresh[3:5])


def test_tfds_streamed_subset(tiny_dir):
  cfg = data_config(source="tfds", name="simclr_test_tiny", data_dir=tiny_dir,
                    image_size=8, cache=False)
  value_at = _values(data.make_eval_iterator(cfg, aug_config(), "train", 23))
  subset = np.array([0, 3, 4, 9, 10, 15, 20, 22])
  batches = take(data.make_supervised_iterator(
      cfg, identity_aug(), 4, seed=0, indices=subset, process_count=1,
      process_index=0), 4)
  vals = _values(batches)
  assert sorted(vals[:8]) == sorted(value_at[i] for i in subset)
  assert vals[:8] != vals[8:]  # reshuffled each epoch


@pytest.mark.parametrize("cache", [False, True])
def test_tfds_mock_cifar10(cache):
  with tfds.testing.mock_data(num_examples=20):
    cfg = data_config(source="tfds", name="cifar10", cache=cache)
    info = data.dataset_info(cfg)
    assert info.num_classes == 10 and info.image_shape == (32, 32, 3)
    fresh = take(data.make_pretrain_iterator(cfg, aug_config(), 4, seed=0,
                                             process_count=1,
                                             process_index=0), 6)
    assert fresh[0]["images"].shape == (4, 2, 16, 16, 3)
    resumed = take(data.make_pretrain_iterator(cfg, aug_config(), 4, seed=0,
                                               start_step=4, process_count=1,
                                               process_index=0), 2)
    assert_batches_equal(resumed, fresh[4:6])  # crosses the epoch boundary
    batches = list(data.make_eval_iterator(cfg, aug_config(), "test", 8,
                                           process_count=1, process_index=0))
    assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 20


# ----------------------------------------------------------------- folder ---


@pytest.fixture()
def folder_root(tmp_path):
  rng = np.random.default_rng(0)
  pixels = {}
  for split, per_class in (("train", 4), ("test", 2)):
    for c, name in enumerate(["cat", "dog", "emu"]):
      os.makedirs(tmp_path / split / name)
      for k in range(per_class):
        im = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = tmp_path / split / name / f"{k}.png"
        Image.fromarray(im).save(path)
        pixels[str(path)] = (im, c)
  # A JPEG of another size: exercises decoding and the mixed-shape cache.
  Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
      tmp_path / "train" / "dog" / "z.jpeg")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
  return str(tmp_path), pixels


@pytest.mark.quick
@pytest.mark.parametrize("cache", [False, True])
def test_folder_source(folder_root, cache):
  root, pixels = folder_root
  cfg = data_config(source="folder", data_dir=root, image_size=8, cache=cache)
  info = data.dataset_info(cfg)
  assert info.num_examples == {"train": 13, "test": 6}
  assert info.num_classes == 3
  batches = list(data.make_eval_iterator(cfg, aug_config(), "test", 4))
  assert len(batches) == 2
  got = np.concatenate([b["images"] for b in batches])[:6]
  labels = np.concatenate([b["labels"] for b in batches])[:6]
  want = [pixels[os.path.join(root, "test", n, f"{k}.png")]
          for n in ("cat", "dog", "emu") for k in range(2)]
  np.testing.assert_allclose(got, np.stack([w[0] for w in want]) / 255.0,
                             atol=1e-6)
  np.testing.assert_array_equal(labels, [w[1] for w in want])
  batch = next(data.make_pretrain_iterator(cfg, aug_config(), 4, seed=0,
                                           process_count=1, process_index=0))
  assert batch["images"].shape == (4, 2, 8, 8, 3)


# ----------------------------------------------------------------- errors ---


@pytest.mark.quick
def test_errors(tmp_path):
  aug = aug_config()
  with pytest.raises(ValueError, match="data.source"):
    data.dataset_info(data_config(source="mnist_csv"))
  with pytest.raises(ValueError, match="data.name"):
    data.dataset_info(data_config(source="tfds", name="no_such_dataset_xyz"))
  missing = str(tmp_path / "missing")
  for source in ("tfds", "folder"):
    with pytest.raises(ValueError, match="data.data_dir.*missing"):
      data.dataset_info(data_config(source=source, name="cifar10",
                                    data_dir=missing))
  with pytest.raises(ValueError, match="global_batch"):
    data.make_pretrain_iterator(data_config(), aug, 7, 0, process_index=0,
                                process_count=2)
  with pytest.raises(ValueError, match="global_batch"):
    data.make_eval_iterator(data_config(), aug, "test", 9, 0, 2)
  with pytest.raises(ValueError, match="indices"):
    data.make_supervised_iterator(data_config(), aug, 8, 0,
                                  indices=np.array([0, 5000]))
  with pytest.raises(ValueError, match="data.eval_split"):
    data.dataset_info(data_config(eval_split="validation"))
