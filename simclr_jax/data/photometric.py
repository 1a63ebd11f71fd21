"""Photometric SimCLR augmentations: colour jitter, grayscale, Gaussian blur.

Stateless like the rest of `simclr_jax.data`: every random choice is taken
from an explicit int seed tensor of shape [2]. Formulas follow the official
SimCLR `data_util.py` (v2 multiplicative brightness, TF HSV ops for
saturation and hue, random op order, clipping to [0, 1] after each op).
"""

import functools
from typing import Any, Callable, Tuple

from simclr_jax.data.tf_host import tf

# The official constants, shared with the JAX port (`simclr_jax.data.augment_jax`).
# pylint: disable=unused-import
from simclr_jax.data.common import BRIGHTNESS_PER_STRENGTH
from simclr_jax.data.common import CONTRAST_PER_STRENGTH
from simclr_jax.data.common import HUE_PER_STRENGTH
from simclr_jax.data.common import SATURATION_PER_STRENGTH
from simclr_jax.data.common import blur_kernel_size
from simclr_jax.data.common import op_prob
# pylint: enable=unused-import

Seed = tf.Tensor

def _uniform(seed: Seed, low: float, high: float, shape=()) -> tf.Tensor:
  return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def random_apply(fn: Callable[[tf.Tensor], tf.Tensor], prob: float,
                 seed: Seed, image: tf.Tensor) -> tf.Tensor:
  """Applies `fn` to `image` with probability `prob` (decided by `seed`).

  Args:
    fn: the transformation.
    prob: probability of applying it.
    seed: int tensor of shape [2].
    image: the input.

  Returns:
    `fn(image)` or `image`.
  """
  apply = tf.random.stateless_uniform([], seed) < prob
  return tf.cond(apply, lambda: fn(image), lambda: image)


def sample_jitter(seed: Seed, strength: float) -> Tuple[tf.Tensor, tf.Tensor]:
  """Samples colour-jitter factors and a random op order (`color_jitter_rand`).

  Args:
    seed: int tensor of shape [2].
    strength: the colour strength s.

  Returns:
    (factors, order): float32 [4] = (brightness factor, contrast factor,
    saturation factor, hue delta) and int32 [4], a permutation of 0..3.
  """
  seeds = tf.random.experimental.stateless_split(seed, 5)
  b = BRIGHTNESS_PER_STRENGTH * strength
  c = CONTRAST_PER_STRENGTH * strength
  s = SATURATION_PER_STRENGTH * strength
  h = HUE_PER_STRENGTH * strength
  factors = tf.stack([
      _uniform(seeds[0], max(0.0, 1.0 - b), 1.0 + b),
      _uniform(seeds[1], 1.0 - c, 1.0 + c),
      _uniform(seeds[2], 1.0 - s, 1.0 + s),
      _uniform(seeds[3], -h, h),
  ])
  order = tf.argsort(tf.random.stateless_uniform([4], seeds[4]))
  return factors, tf.cast(order, tf.int32)


def adjust_brightness(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Multiplicative brightness (SimCLR v2 `random_brightness`).

  Args:
    image: float32 [H, W, 3].
    factor: scalar float32 tensor.

  Returns:
    The adjusted image (not clipped).
  """
  return image * factor


def adjust_contrast(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """(x - mean) * factor + mean, mean per channel over the image.

  Args:
    image: float32 [H, W, 3].
    factor: scalar float32 tensor.

  Returns:
    The adjusted image (not clipped).
  """
  return tf.image.adjust_contrast(image, factor)


def adjust_saturation(image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Scales the HSV saturation by `factor` (clipped to [0, 1]).

  Args:
    image: float32 [H, W, 3].
    factor: scalar float32 tensor.

  Returns:
    The adjusted image (not clipped).
  """
  return tf.image.adjust_saturation(image, factor)


def adjust_hue(image: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
  """Rotates the HSV hue by `delta` (in turns, modulo 1).

  Args:
    image: float32 [H, W, 3].
    delta: scalar float32 tensor.

  Returns:
    The adjusted image (not clipped).
  """
  return tf.image.adjust_hue(image, delta)


COLOR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation,
              adjust_hue)


def apply_color_jitter(image: tf.Tensor, factors: tf.Tensor,
                       order: tf.Tensor) -> tf.Tensor:
  """Applies the four colour ops in `order`, clipping to [0, 1] after each.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    factors: float32 [4], see `sample_jitter`.
    order: int32 [4], op indices (0 brightness, 1 contrast, 2 saturation,
      3 hue).

  Returns:
    The jittered image.
  """
  for i in range(len(COLOR_OPS)):
    branches = [functools.partial(op, image, factors[k])
                for k, op in enumerate(COLOR_OPS)]
    image = tf.switch_case(order[i], branches)
    image = tf.clip_by_value(image, 0.0, 1.0)
  return image


def color_jitter(image: tf.Tensor, seed: Seed, strength: float) -> tf.Tensor:
  """Random-order colour jitter of strength `strength` (always applied).

  Args:
    image: float32 [H, W, 3] in [0, 1].
    seed: int tensor of shape [2].
    strength: the colour strength s.

  Returns:
    The jittered image in [0, 1].
  """
  factors, order = sample_jitter(seed, strength)
  return apply_color_jitter(image, factors, order)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma grayscale, kept as three identical channels.

  Args:
    image: float32 [H, W, 3].

  Returns:
    float32 [H, W, 3] with equal channels.
  """
  return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_color_distortion(image: tf.Tensor, seed: Seed, aug_cfg: Any,
                            grayscale_fn: Callable[[tf.Tensor], tf.Tensor]
                            = to_grayscale) -> tf.Tensor:
  """Jitter with prob color_prob, then grayscale with prob grayscale_prob.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    seed: int tensor of shape [2].
    aug_cfg: config with color_strength, color_prob and grayscale_prob.
    grayscale_fn: the grayscale op (the fast path passes an equal, cheaper one).

  Returns:
    The distorted image in [0, 1].
  """
  apply_seed, jitter_seed, gray_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  jitter = functools.partial(color_jitter, seed=jitter_seed,
                             strength=aug_cfg.color_strength)
  image = random_apply(jitter, op_prob(aug_cfg, "color_jitter"), apply_seed,
                       image)
  return random_apply(grayscale_fn, op_prob(aug_cfg, "grayscale"), gray_seed,
                      image)


def gaussian_blur(image: tf.Tensor, kernel_size: int,
                  sigma: tf.Tensor) -> tf.Tensor:
  """Separable Gaussian blur, zero 'SAME' padding (official `gaussian_blur`).

  Args:
    image: float32 [H, W, C].
    kernel_size: odd kernel side (2 * radius + 1).
    sigma: standard deviation in pixels.

  Returns:
    The blurred image, same shape.
  """
  radius = kernel_size // 2
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  kernel /= tf.reduce_sum(kernel)
  channels = tf.shape(image)[-1]
  blur_h = tf.tile(tf.reshape(kernel, [1, kernel_size, 1, 1]),
                   [1, 1, channels, 1])
  blur_v = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]),
                   [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(image[None], blur_h, [1, 1, 1, 1], "SAME")
  out = tf.nn.depthwise_conv2d(out, blur_v, [1, 1, 1, 1], "SAME")
  return out[0]


def random_blur(image: tf.Tensor, seed: Seed, aug_cfg: Any) -> tf.Tensor:
  """Gaussian blur with prob blur_prob and sigma ~ U[sigma_min, sigma_max].

  The kernel side follows the official code: image height x blur_kernel_frac.

  Args:
    image: float32 [H, W, 3] with a static height.
    seed: int tensor of shape [2].
    aug_cfg: config with blur_prob, blur_sigma_min/max, blur_kernel_frac.

  Returns:
    The blurred or unchanged image.
  """
  apply_seed, sigma_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  kernel_size = blur_kernel_size(int(image.shape[0]), aug_cfg.blur_kernel_frac)
  sigma = _uniform(sigma_seed, aug_cfg.blur_sigma_min, aug_cfg.blur_sigma_max)
  blur = functools.partial(gaussian_blur, kernel_size=kernel_size, sigma=sigma)
  return random_apply(blur, op_prob(aug_cfg, "blur"), apply_seed, image)
