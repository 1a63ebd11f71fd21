"""On-accelerator SimCLR photometric augmentation in JAX.

The host decodes, crops and resizes; this module does the rest of a view on
each device inside the train step: horizontal flip, colour jitter (random
order, clipped after each op), grayscale and Gaussian blur, then a final clip.
The distribution is that of `simclr_jax.data.augment.preprocess_pretrain`
after its crop: the same probabilities and ranges, TF's multiplicative
brightness, per-channel-mean contrast, HSV saturation and hue, luma
grayscale and a zero-padded separable Gaussian blur. Every image draws its own
parameters (`sample_params`) and the ops are vmapped, so nothing branches.

The blur is a product with a banded [H, H] (and [W, W]) matrix per image:
exactly the zero-padded 'SAME' convolution of the reference, as matrix
products, which accelerators run at full rate for any per-image sigma.
"""

from typing import Any, Dict

import jax
import jax.numpy as jnp

from simclr_jax.data import common

# tf.image.rgb_to_grayscale's luma weights.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# Colour-op indices, as in `photometric.COLOR_OPS`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
NUM_COLOR_OPS = 4

Params = Dict[str, jax.Array]


def sample_params(key: jax.Array, num: int, aug_cfg: Any) -> Params:
  """Draws the per-image random parameters of `num` views.

  Args:
    key: a JAX PRNG key.
    num: number of views.
    aug_cfg: the `config.aug` ConfigDict.

  Returns:
    {'flip', 'color', 'gray', 'blur': bool [num]; 'factors': float32
    [num, 4] (brightness, contrast, saturation factors, hue delta);
    'order': int32 [num, 4], a permutation of the colour ops; 'sigma':
    float32 [num]}.
  """
  keys = jax.random.split(key, 10)
  s = float(aug_cfg.color_strength)
  b = common.BRIGHTNESS_PER_STRENGTH * s
  c = common.CONTRAST_PER_STRENGTH * s
  sat = common.SATURATION_PER_STRENGTH * s
  h = common.HUE_PER_STRENGTH * s
  u = lambda k, lo, hi: jax.random.uniform(k, (num,), jnp.float32, lo, hi)
  factors = jnp.stack([u(keys[0], max(0.0, 1.0 - b), 1.0 + b),
                       u(keys[1], 1.0 - c, 1.0 + c),
                       u(keys[2], 1.0 - sat, 1.0 + sat),
                       u(keys[3], -h, h)], axis=-1)
  # argsort of uniforms: a uniformly random permutation, as in the reference.
  order = jnp.argsort(jax.random.uniform(keys[4], (num, NUM_COLOR_OPS)), -1)
  coin = lambda k, p: jax.random.uniform(k, (num,)) < p
  # op_prob is 0 for an op switched off (aug.flip, ...), as on the host.
  prob = lambda op: common.op_prob(aug_cfg, op)
  return {
      "flip": coin(keys[5], prob("flip")),
      "color": coin(keys[6], prob("color_jitter")),
      "gray": coin(keys[7], prob("grayscale")),
      "blur": coin(keys[8], prob("blur")) & bool(aug_cfg.blur),
      "factors": factors,
      "order": order.astype(jnp.int32),
      "sigma": u(keys[9], aug_cfg.blur_sigma_min, aug_cfg.blur_sigma_max),
  }


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """(x - mean) * factor + mean with the mean per channel (tf.image).

  Args:
    image: float32 [H, W, 3].
    factor: scalar.

  Returns:
    The adjusted image (not clipped).
  """
  mean = jnp.mean(image, axis=(0, 1), keepdims=True)
  return (image - mean) * factor + mean


def rgb_to_hsv(image: jax.Array) -> jax.Array:
  """RGB in [0, 1] to HSV with hue in turns [0, 1) (tf.image convention)."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  v = jnp.max(image, axis=-1)
  span = v - jnp.min(image, axis=-1)
  s = jnp.where(v > 0, span / jnp.where(v > 0, v, 1.0), 0.0)
  safe = jnp.where(span > 0, span, 1.0)
  h = jnp.where(r == v, (g - b) / safe,
                jnp.where(g == v, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h = jnp.where(span > 0, jnp.mod(h / 6.0, 1.0), 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """HSV (hue in turns) to RGB: f(n) = v - v s max(0, min(k, 4 - k, 1))."""
  h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
  n = jnp.asarray([5.0, 3.0, 1.0], hsv.dtype)
  k = jnp.mod(n + 6.0 * h, 6.0)
  return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def adjust_hsv(image: jax.Array, saturation: jax.Array,
               hue: jax.Array) -> jax.Array:
  """Scales HSV saturation (clipped to [0, 1]) and rotates hue (modulo 1).

  Args:
    image: float32 [H, W, 3].
    saturation: scalar factor (1 = unchanged).
    hue: scalar delta in turns (0 = unchanged).

  Returns:
    The adjusted image.
  """
  hsv = rgb_to_hsv(image)
  h = jnp.mod(hsv[..., 0] + hue, 1.0)
  s = jnp.clip(hsv[..., 1] * saturation, 0.0, 1.0)
  return hsv_to_rgb(jnp.stack([h, s, hsv[..., 2]], axis=-1))


def apply_color_jitter(image: jax.Array, factors: jax.Array,
                       order: jax.Array) -> jax.Array:
  """The four colour ops in `order`, clipping to [0, 1] after each.

  Saturation and hue share one HSV round trip per position; under vmap every
  branch is evaluated anyway, so this halves the expensive work.

  Args:
    image: float32 [H, W, 3].
    factors: float32 [4] (brightness, contrast, saturation, hue delta).
    order: int32 [4], a permutation of the op indices.

  Returns:
    The jittered image in [0, 1].
  """
  for i in range(NUM_COLOR_OPS):
    op = order[i]
    hsv = adjust_hsv(image,
                     jnp.where(op == SATURATION, factors[SATURATION], 1.0),
                     jnp.where(op == HUE, factors[HUE], 0.0))
    image = jnp.where(op == BRIGHTNESS, image * factors[BRIGHTNESS],
                      jnp.where(op == CONTRAST,
                                adjust_contrast(image, factors[CONTRAST]),
                                hsv))
    image = jnp.clip(image, 0.0, 1.0)
  return image


def to_grayscale(image: jax.Array) -> jax.Array:
  """Luma grayscale as three equal channels (tf.image.rgb_to_grayscale)."""
  gray = image @ jnp.asarray(GRAY_WEIGHTS, image.dtype)
  return jnp.repeat(gray[..., None], 3, axis=-1)


def blur_matrix(side: int, kernel_size: int, sigma: jax.Array) -> jax.Array:
  """Banded [side, side] matrix of a normalised zero-padded Gaussian.

  Args:
    side: image side along the blurred axis.
    kernel_size: odd kernel side 2r + 1.
    sigma: standard deviation in pixels.

  Returns:
    M with (M @ x)[i] = sum_t k[t] x[i + t - r] (zeros outside the image).
  """
  radius = kernel_size // 2
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  norm = jnp.sum(jnp.exp(-taps ** 2 / (2.0 * sigma ** 2)))
  idx = jnp.arange(side)
  d = (idx[None, :] - idx[:, None]).astype(jnp.float32)
  weights = jnp.exp(-d ** 2 / (2.0 * sigma ** 2)) / norm
  return jnp.where(jnp.abs(d) <= radius, weights, 0.0)


def gaussian_blur(image: jax.Array, kernel_size: int,
                  sigma: jax.Array) -> jax.Array:
  """Separable Gaussian blur with zero padding (`photometric.gaussian_blur`).

  Args:
    image: float32 [H, W, C].
    kernel_size: odd kernel side.
    sigma: standard deviation in pixels.

  Returns:
    The blurred image.
  """
  height, width = image.shape[:2]
  rows = blur_matrix(height, kernel_size, sigma)
  cols = blur_matrix(width, kernel_size, sigma)
  out = jnp.einsum("ij,jwc->iwc", rows, image,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("ij,hjc->hic", cols, out,
                    precision=jax.lax.Precision.HIGHEST)


def augment_image(image: jax.Array, params: Params, aug_cfg: Any) -> jax.Array:
  """Flip, colour distortion, grayscale, blur and clip of one cropped view.

  Args:
    image: float32 [H, W, 3], the resized crop (not clipped).
    params: one view's entries of `sample_params`.
    aug_cfg: the `config.aug` ConfigDict.

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  image = jnp.where(params["flip"], image[:, ::-1], image)
  jittered = apply_color_jitter(image, params["factors"], params["order"])
  image = jnp.where(params["color"], jittered, image)
  image = jnp.where(params["gray"], to_grayscale(image), image)
  if aug_cfg.blur:
    size = common.blur_kernel_size(int(image.shape[0]),
                                        aug_cfg.blur_kernel_frac)
    blurred = gaussian_blur(image, size, params["sigma"])
    image = jnp.where(params["blur"], blurred, image)
  return jnp.clip(image, 0.0, 1.0)


def augment_batch(key: jax.Array, images: jax.Array,
                  aug_cfg: Any) -> jax.Array:
  """Augments every view of a batch with independent random parameters.

  Args:
    key: a JAX PRNG key (fold in the step and the device index).
    images: float [..., H, W, 3] cropped views, e.g. [n, V, H, W, 3].
    aug_cfg: the `config.aug` ConfigDict.

  Returns:
    float32 views of the same shape, in [0, 1].
  """
  shape = images.shape
  flat = images.reshape((-1,) + shape[-3:]).astype(jnp.float32)
  params = sample_params(key, flat.shape[0], aug_cfg)
  out = jax.vmap(lambda x, p: augment_image(x, p, aug_cfg))(flat, params)
  return out.reshape(shape)


def choose_input_path(config: Any, backend: str) -> bool:
  """Whether the augmentation runs on the device, on this backend.

  With `aug.on_device_on_accelerators` (the accelerator recipes set it) a
  run on a GPU or TPU backend uses `aug.on_device`: the host only decodes,
  crops and resizes (the fastest host path, tested equal to the reference
  crops), and flip, colour, grayscale and blur run in the train step (tested
  against the reference's statistics). On a CPU backend the host path stays
  as configured: there the device is the host. The choice is logged either
  way; the config is not changed (the pretraining mode's rule sets
  `aug.on_device` from this when it resolves the config).

  Args:
    config: the full configuration.
    backend: `jax.default_backend()` ('cpu', 'gpu', 'tpu', ...).

  Returns:
    Whether on-device augmentation is to be on.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  aug = config.aug
  if not aug.get("on_device_on_accelerators", False):
    return bool(aug.get("on_device", False))
  if backend != "cpu":
    logging.info("Input path: %s backend, so the host crops and the train "
                 "step does flip, colour, grayscale and blur (aug.on_device="
                 "True, from aug.on_device_on_accelerators)", backend)
    return True
  logging.info("Input path: CPU backend, so the whole augmentation stays "
               "in tf.data (aug.on_device=%s, data.fast_jpeg=%s)",
               aug.on_device, config.data.get("fast_jpeg", False))
  return bool(aug.on_device)
