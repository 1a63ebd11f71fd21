"""JAX photometric ops against the tf.image / reference ops on the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import imagenet
from simclr_jax.data import augment_jax
from simclr_jax.data import photometric

EXACT = 1e-5  # brightness, contrast, grayscale, flip
HSV = 1e-3  # hue, saturation, blur


def _images(n=4, size=24, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(n, size, size, 3)).astype(np.float32)
  images[0, :4] = 0.5  # grey pixels: zero saturation, undefined hue
  images[1, :, :3] = 0.0  # black pixels
  return images


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b))))


@pytest.mark.quick
@pytest.mark.parametrize("factor", [0.2, 1.0, 1.7])
def test_brightness_contrast_match_tf(factor):
  for image in _images():
    tf_b = photometric.adjust_brightness(tf.constant(image), factor).numpy()
    assert _max_diff(image * jnp.float32(factor), tf_b) < EXACT
    tf_c = photometric.adjust_contrast(tf.constant(image), factor).numpy()
    assert _max_diff(augment_jax.adjust_contrast(image, factor), tf_c) < EXACT


@pytest.mark.quick
def test_grayscale_and_flip_match_tf():
  for image in _images():
    tf_g = photometric.to_grayscale(tf.constant(image)).numpy()
    assert _max_diff(augment_jax.to_grayscale(jnp.asarray(image)), tf_g) < EXACT
    tf_f = tf.image.flip_left_right(image).numpy()
    params = {"flip": True, "color": False, "gray": False, "blur": False,
              "factors": jnp.ones(4), "order": jnp.arange(4), "sigma": 1.0}
    cfg = imagenet.get_config().aug
    cfg.blur = False
    # Inputs in [0, 1]: the final clip leaves them unchanged.
    out = augment_jax.augment_image(jnp.asarray(image), params, cfg)
    assert _max_diff(out, tf_f) < EXACT


@pytest.mark.quick
@pytest.mark.parametrize("factor", [0.0, 0.3, 1.0, 1.8])
def test_saturation_matches_tf(factor):
  for image in _images():
    ref = tf.image.adjust_saturation(image, factor).numpy()
    assert _max_diff(augment_jax.adjust_hsv(image, factor, 0.0), ref) < HSV


@pytest.mark.quick
@pytest.mark.parametrize("delta", [-0.2, -0.05, 0.0, 0.13, 0.5])
def test_hue_matches_tf(delta):
  for image in _images():
    ref = tf.image.adjust_hue(image, delta).numpy()
    assert _max_diff(augment_jax.adjust_hsv(image, 1.0, delta), ref) < HSV


@pytest.mark.quick
@pytest.mark.parametrize("sigma", [0.1, 0.9, 2.0])
def test_blur_matches_reference_conv(sigma):
  kernel = photometric.blur_kernel_size(48, 0.1)  # radius 2
  for image in _images(size=48):
    ref = photometric.gaussian_blur(tf.constant(image), kernel,
                                    tf.constant(sigma)).numpy()
    out = augment_jax.gaussian_blur(jnp.asarray(image), kernel,
                                    jnp.float32(sigma))
    assert _max_diff(out, ref) < HSV


@pytest.mark.quick
def test_jitter_in_random_order_matches_reference():
  rng = np.random.default_rng(1)
  for image in _images():
    factors = np.array([rng.uniform(0.2, 1.8), rng.uniform(0.2, 1.8),
                        rng.uniform(0.2, 1.8), rng.uniform(-0.2, 0.2)],
                       np.float32)
    order = rng.permutation(4).astype(np.int32)
    ref = photometric.apply_color_jitter(tf.constant(image),
                                         tf.constant(factors),
                                         tf.constant(order)).numpy()
    out = augment_jax.apply_color_jitter(jnp.asarray(image), factors, order)
    assert _max_diff(out, ref) < HSV


@pytest.mark.quick
def test_batch_uses_per_image_parameters_and_clips():
  cfg = imagenet.get_config().aug
  images = jnp.asarray(_images(n=6, size=16)).reshape(3, 2, 16, 16, 3) * 1.2
  key = jax.random.PRNGKey(3)
  out = jax.jit(lambda k, x: augment_jax.augment_batch(k, x, cfg))(key, images)
  assert out.shape == images.shape and out.dtype == jnp.float32
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  # Each view equals augment_image with its own slice of the parameters.
  params = augment_jax.sample_params(key, 6, cfg)
  flat = images.reshape(6, 16, 16, 3)
  for i in range(6):
    one = jax.tree.map(lambda p: p[i], params)
    ref = augment_jax.augment_image(flat[i], one, cfg)
    np.testing.assert_allclose(out.reshape(6, 16, 16, 3)[i], ref, atol=1e-6)


@pytest.mark.quick
def test_parameter_distribution_matches_reference_sampler():
  """Probabilities and jitter ranges against the tf sampler, by statistics."""
  cfg = imagenet.get_config().aug
  num = 4000
  params = jax.device_get(augment_jax.sample_params(jax.random.PRNGKey(0),
                                                    num, cfg))
  tf_factors = np.stack([
      photometric.sample_jitter(tf.constant([i, 7], tf.int64),
                                cfg.color_strength)[0].numpy()
      for i in range(400)])
  lo = np.array([0.2, 0.2, 0.2, -0.2])
  hi = np.array([1.8, 1.8, 1.8, 0.2])
  assert np.all(params["factors"] >= lo - 1e-6)
  assert np.all(params["factors"] <= hi + 1e-6)
  # Uniform on [lo, hi]: mean (lo + hi) / 2, std (hi - lo) / sqrt(12).
  np.testing.assert_allclose(params["factors"].mean(0), (lo + hi) / 2,
                             atol=0.05)
  np.testing.assert_allclose(tf_factors.mean(0), (lo + hi) / 2, atol=0.1)
  np.testing.assert_allclose(params["factors"].std(0),
                             (hi - lo) / np.sqrt(12), rtol=0.05)
  for name, p in (("flip", cfg.flip_prob), ("color", cfg.color_prob),
                  ("gray", cfg.grayscale_prob), ("blur", cfg.blur_prob)):
    # 4 standard errors of a Bernoulli frequency over `num` draws.
    assert abs(params[name].mean() - p) < 4 * np.sqrt(p * (1 - p) / num), name
  first = np.bincount(params["order"][:, 0], minlength=4) / num
  np.testing.assert_allclose(first, 0.25, atol=0.03)
  assert np.all(np.sort(params["order"], -1) == np.arange(4))
  assert params["sigma"].min() >= cfg.blur_sigma_min
  assert params["sigma"].max() <= cfg.blur_sigma_max


def test_on_device_step_augmentation_keys_per_step_and_device():
  """pretrain.augment_on_device: key fold_in(fold_in(seed, step), device)."""
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax.modes import pretrain
  cfg = imagenet.get_config().aug
  mesh = parallel.make_mesh()
  images = np.random.default_rng(2).uniform(
      size=(8, 2, 16, 16, 3)).astype(np.float32)
  fn = jax.jit(parallel.per_replica(
      lambda b, s: pretrain.augment_on_device(b, s, cfg, 5)["images"], mesh,
      in_specs=(P(parallel.AXIS), P()), out_specs=P(parallel.AXIS)))
  batch = parallel.host_to_global(mesh, {"images": images})
  out = np.asarray(fn(batch, parallel.replicate(mesh, np.int32(7))))
  for d in range(8):  # device d holds image d
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(5), 7), d)
    ref = augment_jax.augment_batch(key, images[d:d + 1], cfg)
    np.testing.assert_allclose(out[d:d + 1], ref, atol=1e-6)
  other = np.asarray(fn(batch, parallel.replicate(mesh, np.int32(8))))
  assert np.abs(other - out).max() > 1e-2  # a new step draws new parameters
