"""Tests of the stateless SimCLR augmentations against NumPy references."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from simclr_jax.data import augment
from simclr_jax.data import photometric

pytestmark = pytest.mark.quick

N_DRAWS = 1000
FREQ_TOL = 0.06  # about 4 binomial standard deviations at 1000 draws


def aug_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      num_views=2, crop_area_min=0.08, crop_area_max=1.0, aspect_min=3 / 4,
      aspect_max=4 / 3, flip_prob=0.5, color_strength=1.0, color_prob=0.8,
      grayscale_prob=0.2, blur=True, blur_prob=0.5, blur_sigma_min=0.1,
      blur_sigma_max=2.0, blur_kernel_frac=0.1, eval_crop_proportion=0.875))
  cfg.update(overrides)
  return cfg


def smooth_image(h=24, w=20, seed=0) -> np.ndarray:
  """A colourful, asymmetric float32 image in (0, 1)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([x, y, 0.5 * (x + y)], -1)
  return (0.05 + 0.9 * (0.7 * base + 0.3 * rng.random((h, w, 3)))).astype(
      np.float32)


def seeds(n, start=0):
  return tf.random.experimental.stateless_split(
      tf.constant([start, 7], tf.int64), n)


def many(fn, n=N_DRAWS, start=0):
  """Runs fn(seed) for n seeds in graph mode; stacks the results."""
  ds = tf.data.Dataset.from_tensor_slices(seeds(n, start)).map(
      tf.autograph.experimental.do_not_convert(fn)).batch(n)
  return tf.nest.map_structure(lambda t: t.numpy(), ds.get_single_element())


# ------------------------------------------------ NumPy float64 references ---


def np_rgb_to_hsv(rgb):
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = rgb.max(-1)
  c = v - rgb.min(-1)
  s = np.where(v > 0, c / np.where(v > 0, v, 1), 0)
  safe = np.where(c > 0, c, 1)
  h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe,
                                                4 + (r - g) / safe))
  h = np.where(c > 0, (h / 6) % 1.0, 0)
  return np.stack([h, s, v], -1)


def np_hsv_to_rgb(hsv):
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  k = lambda n: (n + h * 6) % 6
  f = lambda n: v - v * s * np.clip(np.minimum(k(n), 4 - k(n)), 0, 1)
  return np.stack([f(5), f(3), f(1)], -1)


def np_brightness(x, f):
  return x * f


def np_contrast(x, f):
  mean = x.mean(axis=(0, 1), keepdims=True)
  return (x - mean) * f + mean


def np_saturation(x, f):
  hsv = np_rgb_to_hsv(x)
  hsv[..., 1] = np.clip(hsv[..., 1] * f, 0, 1)
  return np_hsv_to_rgb(hsv)


def np_hue(x, delta):
  hsv = np_rgb_to_hsv(x)
  hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
  return np_hsv_to_rgb(hsv)


NP_OPS = (np_brightness, np_contrast, np_saturation, np_hue)


def np_blur(x, sigma, kernel_size):
  r = kernel_size // 2
  t = np.arange(-r, r + 1, dtype=np.float64)
  k = np.exp(-t ** 2 / (2 * sigma ** 2))
  k /= k.sum()
  h, w, _ = x.shape
  pad = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)))
  rows = sum(k[i] * pad[:, i:i + w] for i in range(2 * r + 1))
  return sum(k[i] * rows[i:i + h] for i in range(2 * r + 1))


# ------------------------------------------------------------------ tests ---


def test_hsv_reference_round_trip():
  x = smooth_image().astype(np.float64)
  np.testing.assert_allclose(np_hsv_to_rgb(np_rgb_to_hsv(x)), x, atol=1e-12)


@pytest.mark.parametrize("op,factor", [(0, 0.6), (0, 1.7), (1, 0.4),
                                       (1, 1.6), (2, 0.3), (2, 1.8),
                                       (3, -0.17), (3, 0.12)])
def test_single_color_ops_match_numpy(op, factor):
  x = smooth_image()
  got = photometric.COLOR_OPS[op](tf.constant(x),
                                  tf.constant(factor, tf.float32))
  want = NP_OPS[op](x.astype(np.float64), factor)
  # Exact ops in float32 on [0, 1]: a few float32 ulps (measured <= 4e-7),
  # far below the 1/255 of a wrong constant or a missing clip.
  np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)


def test_color_jitter_composition_matches_numpy():
  x = smooth_image()
  factors = np.array([1.5, 1.7, 0.4, 0.15], np.float32)
  for order in [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]:
    got = photometric.apply_color_jitter(tf.constant(x), tf.constant(factors),
                                     tf.constant(order, tf.int32))
    want = x.astype(np.float64)
    for i in order:
      want = np.clip(NP_OPS[i](want, float(factors[i])), 0, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)


def test_jitter_factor_ranges_and_random_order():
  strength = 1.5  # brightness lower bound clamps at 0
  factors, orders = many(lambda s: photometric.sample_jitter(s, strength))
  lows = [0.0, 1 - 0.8 * strength, 1 - 0.8 * strength, -0.2 * strength]
  highs = [1 + 0.8 * strength] * 3 + [0.2 * strength]
  for k in range(4):
    assert factors[:, k].min() >= lows[k] and factors[:, k].max() <= highs[k]
    # Uniform: mean near the middle of the range.
    assert abs(factors[:, k].mean() - (lows[k] + highs[k]) / 2) < 0.1
  np.testing.assert_array_equal(np.sort(orders, 1),
                                np.tile(np.arange(4), (N_DRAWS, 1)))
  firsts = np.bincount(orders[:, 0], minlength=4) / N_DRAWS
  np.testing.assert_allclose(firsts, 0.25, atol=FREQ_TOL)
  seen = {tuple(o) for o in orders}
  assert seen == set(itertools.permutations(range(4)))


def test_grayscale_matches_luma():
  x = smooth_image()
  want = x.astype(np.float64) @ np.array([0.2989, 0.5870, 0.1140])
  got = photometric.to_grayscale(tf.constant(x)).numpy()
  for c in range(3):
    np.testing.assert_allclose(got[..., c], want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("side,sigma", [(32, 1.3), (64, 0.7), (64, 2.0)])
def test_blur_matches_numpy(side, sigma):
  x = smooth_image(side, side)
  ksize = photometric.blur_kernel_size(side, 0.1)
  assert ksize == 2 * ((side // 10) // 2) + 1  # official height // 10
  got = photometric.gaussian_blur(tf.constant(x), ksize, tf.constant(sigma))
  np.testing.assert_allclose(got.numpy(), np_blur(x, sigma, ksize),
                             atol=1e-5)


def test_views_shape_range_and_seed_determinism():
  cfg = aug_config()
  x = tf.constant(smooth_image(40, 30))
  view = lambda s: augment.preprocess_pretrain(x, s, 32, cfg).numpy()
  s = seeds(3)
  a, a2, b, c = view(s[0]), view(s[0]), view(s[1]), view(s[2])
  assert a.shape == (32, 32, 3) and a.dtype == np.float32
  for v in (a, b, c):
    assert v.min() >= 0.0 and v.max() <= 1.0
  np.testing.assert_array_equal(a, a2)
  assert np.abs(a - b).max() > 1e-2 and np.abs(b - c).max() > 1e-2


def test_flip_frequency():
  x = smooth_image(16, 16)
  flipped = x[:, ::-1]
  out = many(lambda s: augment.random_flip(tf.constant(x), s, 0.5))
  is_flip = np.all(out == flipped, axis=(1, 2, 3))
  is_same = np.all(out == x, axis=(1, 2, 3))
  assert np.all(is_flip | is_same)
  assert abs(is_flip.mean() - 0.5) < FREQ_TOL
  out = many(lambda s: augment.random_flip(tf.constant(x), s, 0.2))
  assert abs(np.all(out == flipped, axis=(1, 2, 3)).mean() - 0.2) < FREQ_TOL


def test_color_jitter_frequency():
  x = smooth_image(16, 16)
  cfg = aug_config(grayscale_prob=0.0)
  out = many(lambda s: photometric.random_color_distortion(
      tf.constant(x), s, cfg))
  changed = np.abs(out - x).max(axis=(1, 2, 3)) > 1e-4
  assert abs(changed.mean() - 0.8) < FREQ_TOL


def test_grayscale_frequency():
  x = smooth_image(16, 16)
  cfg = aug_config(color_prob=0.0)
  out = many(lambda s: photometric.random_color_distortion(
      tf.constant(x), s, cfg))
  gray = (np.abs(out[..., 0] - out[..., 1]).max(axis=(1, 2)) < 1e-6) & (
      np.abs(out[..., 1] - out[..., 2]).max(axis=(1, 2)) < 1e-6)
  assert abs(gray.mean() - 0.2) < FREQ_TOL


def test_blur_frequency_and_sigma_range():
  x = tf.constant(np.random.default_rng(1).random((32, 32, 3), np.float32))
  out = many(lambda s: photometric.random_blur(x, s, aug_config()))
  changed = np.abs(out - x.numpy()).max(axis=(1, 2, 3)) > 1e-6
  assert abs(changed.mean() - 0.5) < FREQ_TOL


def test_crop_area_and_aspect():
  cfg = aug_config()
  shape = tf.constant([200, 200, 3])
  sizes = many(lambda s: augment.sample_crop_box(shape, s, cfg)[1])
  area = sizes[:, 0] * sizes[:, 1] / 200.0 ** 2
  aspect = sizes[:, 1] / sizes[:, 0]
  assert area.min() >= 0.08 and area.max() <= 1.0
  assert area.min() < 0.15 and area.max() > 0.9  # the range is explored
  assert 0.35 < area.mean() < 0.5
  # Integer box sides round the ratio by at most ~2% at 200 px.
  assert aspect.min() >= 0.75 * 0.98 and aspect.max() <= 4 / 3 * 1.02


def test_random_resized_crop_is_resize_of_box():
  cfg = aug_config()
  x = smooth_image(40, 30)
  s = seeds(1)[0]
  begin, size = augment.sample_crop_box(tf.constant(x.shape), s, cfg)
  (y0, x0, _), (h, w, _) = begin.numpy(), size.numpy()
  want = tf.image.resize(x[None, y0:y0 + h, x0:x0 + w], [16, 16],
                         method="bicubic")[0].numpy()
  got = augment.random_resized_crop(tf.constant(x), s, 16, cfg).numpy()
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_supervised_train_keeps_colour():
  colour = np.array([0.2, 0.5, 0.7], np.float32)
  x = tf.constant(np.broadcast_to(colour, (24, 20, 3)).copy())
  cfg = aug_config(color_prob=1.0)
  sup = many(lambda s: augment.preprocess_supervised_train(x, s, 16, cfg),
             n=50)
  np.testing.assert_allclose(sup, np.broadcast_to(colour, sup.shape),
                             atol=1e-5)
  pre = many(lambda s: augment.preprocess_pretrain(x, s, 16, cfg), n=50)
  assert (np.abs(pre - colour).max(axis=(1, 2, 3)) > 1e-2).mean() > 0.9


@pytest.mark.parametrize("h,w,top,left,side", [(40, 30, 7, 2, 26),
                                               (30, 40, 2, 7, 26),
                                               (32, 32, 2, 2, 28)])
def test_eval_center_crop(h, w, top, left, side):
  # Hand-computed: side = rint(0.875 * min(h, w)), offset = (H - side + 1)//2.
  x = smooth_image(h, w)
  want = tf.image.resize(x[None, top:top + side, left:left + side], [16, 16],
                         method="bicubic")[0].numpy()
  got = augment.preprocess_eval(tf.constant(x), 16, 0.875).numpy()
  np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-6)
  # At 1.0 the central square of the shorter side: the proportions are kept.
  s = min(h, w)
  t, l = (h - s + 1) // 2, (w - s + 1) // 2
  full = augment.preprocess_eval(tf.constant(x), 16, 1.0).numpy()
  want_full = tf.image.resize(x[None, t:t + s, l:l + s], [16, 16],
                              method="bicubic")[0].numpy()
  np.testing.assert_allclose(full, np.clip(want_full, 0, 1), atol=1e-6)


@pytest.mark.parametrize("field,value", [
    ("num_views", 1), ("num_views", 17), ("flip_prob", 1.5),
    ("crop_area_min", 0.0), ("aspect_min", 2.0), ("blur_sigma_min", -1.0),
    ("eval_crop_proportion", 1.2), ("color_strength", -0.5)])
def test_invalid_aug_config(field, value):
  with pytest.raises(ValueError, match=f"aug.{field}"):
    augment.check_aug_config(aug_config(**{field: value}))
