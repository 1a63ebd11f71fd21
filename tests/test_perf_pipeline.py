"""Fast JPEG path and on-device augmentation against the reference pipeline."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import cifar10
from configs import imagenet
from simclr_jax import modes
from simclr_jax.data import augment
from simclr_jax.data import augment_jax
from simclr_jax.data import fast
from simclr_jax.data import imagefiles
from simclr_jax.data import photometric
from simclr_jax.data import pipeline
from simclr_jax.data import sources
from simclr_jax.engine import resolve
from simclr_jax.tools import benchmark

SIZE = 48
BATCH = 32
# data.fast_jpeg_dct against the exact fast path, 48-px views of the 427x640
# photos (every crop is decoded at 1/2 to 1/8 scale): measured mean per-view
# absolute difference 0.022, largest 0.12 (the reference's bicubic shrink
# aliases fine texture, the scaled decode averages it), channel mean, std and
# saturation statistics within 0.004. A box off by its window offset or one
# mapped at the wrong scale gives several times these.
DCT_MEAN_DIFF = 0.035
DCT_MAX_VIEW_DIFF = 0.2
DCT_STAT_DIFF = 0.01


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("jpegs"))
  return benchmark.write_sample_jpeg_folder(root, copies=BATCH // 2)


def _config(folder, fast_jpeg=False, on_device=False):
  config = imagenet.get_config()
  config.data.source, config.data.data_dir = "folder", folder
  config.data.eval_split = "test"
  config.data.image_size = SIZE
  config.data.fast_jpeg = fast_jpeg
  config.aug.on_device = on_device
  return config


def _batches(config, num=2):
  it = pipeline.make_pretrain_iterator(config.data, config.aug, BATCH, seed=3,
                                       process_index=0, process_count=1)
  return np.concatenate([next(it)["images"] for _ in range(num)])


def _stats(views):
  """Per-view colour statistics: channel means, contrast, saturation."""
  flat = views.reshape(-1, views.shape[-3] * views.shape[-2], 3)
  spread = flat.max(-1) - flat.min(-1)
  return {"mean": flat.mean(1), "std": flat.std(1),
          "sat": spread.mean(1), "gray": (spread.max(1) < 1e-6)}


@pytest.mark.quick
@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_fast_blur_and_grayscale_equal_reference(sigma):
  image = tf.random.stateless_uniform([64, 48, 3], [1, 2])
  ref = photometric.gaussian_blur(image, 13, tf.constant(sigma))
  out = fast.fast_blur(image, 13, tf.constant(sigma))
  np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-6)
  np.testing.assert_allclose(fast.to_grayscale(image).numpy(),
                             photometric.to_grayscale(image).numpy(),
                             atol=1e-6)


@pytest.mark.quick
def test_crop_boxes_from_header_match_reference(folder):
  """Same seeds, same boxes; areas and aspects in the configured ranges."""
  config = _config(folder)
  path = tf.io.gfile.glob(folder + "/train/*/*.jpg")[0]
  encoded = tf.io.read_file(path)
  decoded_shape = tf.shape(tf.io.decode_jpeg(encoded, channels=3))
  hw = tf.io.extract_jpeg_shape(encoded)[:2]
  header_shape = tf.concat([hw, [3]], 0)
  areas, aspects = [], []
  for i in range(200):
    seed = tf.constant([i, 5], tf.int64)
    b1, s1 = augment.sample_crop_box(header_shape, seed, config.aug)
    b2, s2 = augment.sample_crop_box(decoded_shape, seed, config.aug)
    np.testing.assert_array_equal(b1.numpy(), b2.numpy())
    np.testing.assert_array_equal(s1.numpy(), s2.numpy())
    h, w = s1.numpy()[:2]
    areas.append(h * w / (427 * 640))
    aspects.append(w / h)
  areas, aspects = np.array(areas), np.array(aspects)
  assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
  # Integer rounding of the box moves the aspect slightly past the range.
  assert aspects.min() >= 0.75 * 0.97 and aspects.max() <= 4 / 3 * 1.03


@pytest.mark.quick
def test_fast_views_match_reference_views(folder):
  ref = _batches(_config(folder))
  out = _batches(_config(folder, fast_jpeg=True))
  assert out.shape == ref.shape == (2 * BATCH, 2, SIZE, SIZE, 3)
  assert out.min() >= 0 and out.max() <= 1
  # Same seeds give the same crops and photometric draws; only pixels at the
  # decoded window's border may differ (JPEG chroma upsampling).
  diff = np.abs(out - ref)
  assert diff.mean() < 1e-4 and np.mean(diff > 1e-3) < 1e-2
  rs, fs = _stats(ref), _stats(out)
  for key in ("mean", "std", "sat"):
    np.testing.assert_allclose(fs[key].mean(0), rs[key].mean(0), atol=1e-3)
  np.testing.assert_array_equal(fs["gray"], rs["gray"])


@pytest.mark.quick
def test_on_device_host_part_is_the_reference_crop(folder):
  """The host half of on-device augmentation: the resized crop, unclipped."""
  config = _config(folder, on_device=True)
  out = _batches(config, num=1)
  # Row 0 of the first batch is stream position 0: its augmentation key.
  key = pipeline._fold(pipeline._key(3, 0, pipeline._AUGMENT_SALT), 0)  # pylint: disable=protected-access
  paths = [tf.io.gfile.glob(f"{folder}/train/photo{c}/*.jpg")[0]
           for c in range(2)]
  views = []
  for candidate in paths:
    image = tf.image.convert_image_dtype(
        sources.decode_image(tf.io.read_file(candidate)), tf.float32)
    keys = tf.random.experimental.stateless_split(key, 2)
    views.append(np.stack([augment.random_resized_crop(
        image, tf.unstack(tf.random.experimental.stateless_split(
            keys[v], 4))[0], SIZE, config.aug).numpy() for v in range(2)]))
  # The row is a copy of one of the two photos; its crops match to JPEG
  # border noise.
  best = min(np.abs(v - out[0]).mean() for v in views)
  assert best < 1e-3


def _facts(backend):
  return resolve.DataFacts(num_train=4096, num_eval=512, labelled=True,
                           backend=backend)


def test_accelerator_configs_choose_on_device_augmentation(folder):
  for make in (imagenet.get_config, cifar10.get_config):
    assert augment_jax.choose_input_path(make(), "gpu")
    assert modes.get("pretrain").rules()[0](make(), _facts("gpu")) == {
        "aug.on_device": True}
    assert not augment_jax.choose_input_path(make(), "cpu")
  # Only where the config asks, and only where the mode's rules ask.
  config = _config(folder)
  config.aug.on_device_on_accelerators = False
  assert not augment_jax.choose_input_path(config, "tpu")
  config = _config(folder)
  config.mode = "linear_eval"
  assert all("aug.on_device" not in rule(config, _facts("gpu"))
             for rule in modes.get("linear_eval").rules())


def test_on_device_augmentation_matches_reference_statistics(folder):
  """Host crop + JAX photometric ops vs the all-host reference, by statistics.

  The on-device path is the one an accelerator config chooses by default.
  """
  ref = _batches(_config(folder), num=4)
  config = _config(folder)
  config.data.fast_jpeg = False
  assert augment_jax.choose_input_path(config, "gpu")  # as on a GPU
  config.aug.on_device = True
  host = _batches(config, num=4)
  out = np.asarray(jax.jit(lambda k, x: augment_jax.augment_batch(
      k, x, config.aug))(jax.random.PRNGKey(0), host))
  assert out.min() >= 0 and out.max() <= 1
  rs, os_ = _stats(ref), _stats(out)
  n = rs["mean"].shape[0]
  for key in ("mean", "std", "sat"):
    # Three standard errors of a difference of two independent means.
    se = np.sqrt(2 / n) * rs[key].std(0)
    assert np.all(np.abs(os_[key].mean(0) - rs[key].mean(0)) < 3 * se + 1e-3), key
  p = config.aug.grayscale_prob
  assert abs(os_["gray"].mean() - rs["gray"].mean()) < 3 * np.sqrt(2 * p * (1 - p) / n)


# A stand-in for the official tf2/data_util.py: the official signatures, and
# operations whose effect on a batch is known (resize only; "blur" halves).
_STAND_IN = '''
import tensorflow.compat.v2 as tf


def preprocess_for_train(image, height, width, color_jitter_strength=0.,
                         crop=True, flip=True, impl="simclrv2"):
  del color_jitter_strength, crop, flip, impl
  return tf.clip_by_value(tf.image.resize(image, [height, width]), 0., 1.)


def batch_random_blur(images_list, height, width, blur_probability=0.5):
  del height, width, blur_probability
  return [images * 0.5 for images in images_list]
'''


def test_benchmark_times_the_official_code_beside_ours(folder, tmp_path,
                                                        capsys):
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.tools import official_pipeline  # pylint: disable=g-import-not-at-top
  checkout = tmp_path / "simclr"
  (checkout / "tf2").mkdir(parents=True)
  (checkout / "tf2" / "data_util.py").write_text(_STAND_IN)
  data_util = official_pipeline.load_data_util(str(checkout))
  files = sorted(tf.io.gfile.glob(folder + "/train/*/*.jpg"))
  batch = next(official_pipeline.official_batches(data_util, files, 4, SIZE,
                                                  1.0, blur=True))
  assert batch.shape == (4, SIZE, SIZE, 6)
  # Every row is a file resized (both views), then halved by the "blur".
  resized = [tf.image.resize(tf.image.convert_image_dtype(
      tf.io.decode_jpeg(tf.io.read_file(f)), tf.float32), [SIZE, SIZE]
                             ).numpy().clip(0, 1) * 0.5 for f in files]
  for row in batch:
    assert min(np.abs(row[..., :3] - r).max() for r in resized) < 1e-5
    np.testing.assert_allclose(row[..., 3:], row[..., :3], atol=1e-6)
  config = _config(folder)
  config.train.global_batch = 8
  medians = benchmark.print_input_paths(config, ["official", "reference"], 1,
                                        2, str(checkout))
  out = capsys.readouterr().out
  assert set(medians) == {"official", "reference"}
  assert min(medians.values()) > 0
  assert "x the official code" in out
  benchmark.print_input_paths(config, ["official", "reference"], 1, 1, None)
  assert "[official]: skipped" in capsys.readouterr().out
  with pytest.raises(config_lib.ConfigError, match="--official_code"):
    official_pipeline.load_data_util(str(tmp_path))


def test_benchmark_device_augmentation_cost_runs(capsys):
  from configs import digits  # pylint: disable=g-import-not-at-top
  config = digits.get_config("tiny")
  config.train.global_batch = 16
  added = benchmark.print_device_aug_cost(config, steps=1, warmup=0)
  out = capsys.readouterr().out
  import re  # pylint: disable=g-import-not-at-top
  with_ms, without_ms = map(float, re.search(
      r"step ([0-9.]+) ms with it, ([0-9.]+) ms without", out).groups())
  assert abs(with_ms / without_ms - 1 - added) < 0.02
  assert f"adds {added * 100:.1f}%" in out


def test_host_profile_covers_every_stage(folder, capsys):
  from simclr_jax.tools import host_profile  # pylint: disable=g-import-not-at-top
  files = sorted(tf.io.gfile.glob(folder + "/train/*/*.jpg"))
  aug = imagenet.get_config().aug
  rows = host_profile.profile(files, SIZE, aug, batch=4, num_images=8)
  assert [r["stage"] for r in rows] == [s for s, _ in host_profile.STAGES]
  costs = np.array([r["ms_per_image"] for r in rows])
  np.testing.assert_allclose(np.cumsum(costs),
                             [r["cumulative_ms"] for r in rows], rtol=1e-9)
  assert rows[0]["cumulative_ms"] > 0  # decoding a photo takes time
  blur = rows[[s for s, _ in host_profile.STAGES].index("blur")]
  assert blur["expected_ms"] == pytest.approx(blur["ms_per_image"] *
                                              aug.blur_prob)
  host_profile.print_profile(rows)
  assert "host-to-device copy" in capsys.readouterr().out
  fast_rows = host_profile.profile(files, SIZE, aug, batch=4, num_images=8,
                                   path="fast")
  assert [r["stage"] for r in fast_rows] == [
      s for s, _ in host_profile.FAST_STAGES]
  np.testing.assert_allclose(np.cumsum([r["ms_per_image"] for r in fast_rows]),
                             [r["cumulative_ms"] for r in fast_rows],
                             rtol=1e-9)
  assert fast_rows[0]["cumulative_ms"] > 0


def test_fast_profile_stages_build_the_fast_views(folder):
  """Each fast-profile prefix is the fast path with the ops so far, p = 1."""
  from simclr_jax.tools import host_profile  # pylint: disable=g-import-not-at-top
  path = sorted(tf.io.gfile.glob(folder + "/train/*/*.jpg"))[0]
  aug = imagenet.get_config().aug
  index = tf.constant(5, tf.int64)
  key = tf.stack([index, tf.constant(0, tf.int64)])
  encoded = tf.io.read_file(path)
  crops = host_profile._make_fast(1, SIZE, aug)(path, index).numpy()  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      crops, fast.encoded_views(encoded, key, SIZE, aug, True).numpy())
  every_op = aug.copy_and_resolve_references()
  every_op.flip_prob = every_op.color_prob = every_op.grayscale_prob = 1.0
  every_op.blur_prob = 1.0
  full = host_profile._make_fast(5, SIZE, aug)(path, index).numpy()  # pylint: disable=protected-access
  np.testing.assert_allclose(
      full, fast.encoded_views(encoded, key, SIZE, every_op).numpy(), atol=0)
  # Grayscale with probability 1: every view's channels are equal.
  np.testing.assert_allclose(full[..., 0], full[..., 2], atol=1e-6)


@pytest.mark.quick
def test_dct_level_is_the_largest_ratio_every_crop_allows():
  size = 48
  level = lambda *sizes: int(fast.dct_level(
      [tf.constant(s, tf.int32) for s in sizes], size))
  # Hand-worked: the shortest crop side against 2, 4 and 8 times 48.
  assert level([100, 200, -1], [150, 97, -1]) == 1  # 97 >= 96: 1/2
  assert level([400, 400, -1], [390, 500, -1]) == 3  # 390 >= 384: 1/8
  assert level([383, 900, -1], [900, 900, -1]) == 2  # 383 < 384: 1/4
  assert level([95, 300, -1], [300, 300, -1]) == 0  # 95 < 96: full size
  assert [fast.DCT_RATIOS[i] for i in range(4)] == [1, 2, 4, 8]


def test_dct_window_views_are_scaled_decodes_of_the_same_boxes(folder):
  """Each ratio's views = the scaled decode, box mapped by rounding, resized."""
  path = sorted(tf.io.gfile.glob(folder + "/train/*/*.jpg"))[0]
  encoded = tf.io.read_file(path)
  shape = tf.constant([427, 640, 3], tf.int32)
  boxes = [(tf.constant([17, 203, 0]), tf.constant([397, 410, -1])),
           (tf.constant([101, 6, 0]), tf.constant([250, 281, -1]))]
  lo, hi = tf.constant([17, 6]), tf.constant([414, 613])
  for ratio in fast.DCT_RATIOS:
    views = fast._window_views(encoded, shape, boxes, lo, hi, SIZE, ratio)  # pylint: disable=protected-access
    scaled = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio,
                               dct_method=imagefiles.JPEG_DCT_METHOD).numpy()
    assert scaled.shape[:2] == (-(-427 // ratio), -(-640 // ratio))
    for (begin, box), view in zip(boxes, views):
      b, n = begin.numpy()[:2], box.numpy()[:2]
      first = np.floor(b / ratio + 0.5).astype(int) if ratio > 1 else b
      last = np.floor((b + n) / ratio + 0.5).astype(int) if ratio > 1 else b + n
      crop = scaled[first[0]:last[0], first[1]:last[1]]
      want = tf.image.resize(crop.astype(np.float32) / 255.0, [SIZE, SIZE],
                             "bicubic").numpy()
      np.testing.assert_allclose(view.numpy(), want, atol=2e-6)


def test_dct_views_are_close_to_the_reference_views(folder):
  """Same boxes and draws; only the resampling of large crops differs."""
  config = _config(folder, fast_jpeg=True)
  exact = _batches(config)
  config.data.fast_jpeg_dct = True
  out = _batches(config)
  assert out.shape == exact.shape and out.min() >= 0 and out.max() <= 1
  diff = np.abs(out - exact).mean(axis=(2, 3, 4))  # per view
  assert diff.mean() < DCT_MEAN_DIFF and diff.max() < DCT_MAX_VIEW_DIFF
  es, ds = _stats(exact), _stats(out)
  for key in ("mean", "std", "sat"):
    np.testing.assert_allclose(ds[key].mean(0), es[key].mean(0),
                               atol=DCT_STAT_DIFF)
  np.testing.assert_array_equal(ds["gray"], es["gray"])  # same draws


@pytest.mark.quick
def test_dct_decode_needs_the_fast_path():
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config()
  config.data.fast_jpeg_dct = True
  config_lib.validate(config)  # imagenet.py sets data.fast_jpeg
  config.data.fast_jpeg = False
  config.aug.on_device_on_accelerators = False
  with pytest.raises(config_lib.ConfigError, match="data.fast_jpeg_dct"):
    config_lib.validate(config)
