"""Fast host path for SimCLR views: decode only the pixels the crops need.

Same distribution as `augment.preprocess_pretrain` (indeed the same crop
boxes and the same random choices for the same seed), with less work:

* the crop boxes of all V views are sampled from the JPEG header's shape
  (`tf.io.extract_jpeg_shape`), then only their bounding window is decoded
  (`tf.io.decode_and_crop_jpeg`): rows below and columns beside every crop
  are never decoded or colour-converted, and the image is decoded once for
  all views;
* the Gaussian blur runs only for the views selected for blur (as in the
  reference) and only over taps whose weight is representable next to the
  centre tap (|d| <= BLUR_TAIL_SIGMAS * sigma): the dropped taps are below
  1e-8 of the centre, under float32 resolution of the normalised sum;
* the vertical blur pass is vectorised over whole rows (a depthwise
  convolution with W x 3 channels instead of 3);
* grayscale is three multiply-adds instead of a matrix product, and the
  crop is resized from uint8 (one float scaling of the output instead of a
  conversion of the whole decoded window);
* with `on_device` the host stops after crop and resize and the rest runs
  in JAX in the train step (`simclr_jax.data.augment_jax`);
* with `data.fast_jpeg_dct` (off by default: close to the reference, not
  equal) a window whose every crop is at least 2, 4 or 8 times the output
  side on both axes is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
  (libjpeg's scaled inverse DCT), so large photos skip most of the inverse
  transform, colour conversion and resize work. The crop boxes are the
  reference's, mapped to the scaled image to the nearest pixel; the
  resampling differs (the scaled decode low-passes before the bicubic
  resize, where the reference's resize aliases).

JPEGs decode with the reference's IDCT (`imagefiles.JPEG_DCT_METHOD`), so
the window holds the reference's pixels. Sources that are not JPEG (PNG
folders, decoded pixel tables) take the reference decode and the same
per-view code.
"""

import functools
from typing import Any, List

from simclr_jax.data.tf_host import tf

from simclr_jax.data import augment
from simclr_jax.data import imagefiles
from simclr_jax.data import photometric
from simclr_jax.data import sources

# exp(-d^2 / (2 sigma^2)) < 1e-8 for |d| > 6.07 sigma: taps beyond carry no
# float32-visible weight (the normalised centre tap is at least 0.2).
BLUR_TAIL_SIGMAS = 6.1

# tf.image.rgb_to_grayscale's luma weights.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)

Seed = tf.Tensor


def view_seeds(key: Seed, views: int) -> List[List[Seed]]:
  """Per view (crop, flip, colour, blur) seeds, as `preprocess_pretrain`.

  Args:
    key: int tensor of shape [2], the example's augmentation key.
    views: number of views.

  Returns:
    views lists of four seeds.
  """
  keys = tf.random.experimental.stateless_split(key, views)
  return [tf.unstack(tf.random.experimental.stateless_split(keys[v], 4))
          for v in range(views)]


def _blur_kernel(kernel_size: int, sigma: tf.Tensor) -> tf.Tensor:
  """The reference's normalised taps, trimmed to |d| <= BLUR_TAIL_SIGMAS sigma."""
  radius = kernel_size // 2
  needed = tf.cast(tf.math.ceil(BLUR_TAIL_SIGMAS * sigma), tf.int32)
  half = tf.minimum(needed, radius)
  # Normalise over the full reference kernel, so the weights are identical.
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  full = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return full[radius - half:radius + half + 1] / tf.reduce_sum(full)


def fast_blur(image: tf.Tensor, kernel_size: int,
              sigma: tf.Tensor) -> tf.Tensor:
  """`photometric.gaussian_blur` without the taps that round to zero.

  The vertical pass runs as a depthwise convolution whose channels are the
  W x C values of a row (vectorised over hundreds of channels instead of
  three); the horizontal pass is the reference's 3-channel one.

  Args:
    image: float32 [H, W, C] with static H, W and C.
    kernel_size: the reference's odd kernel side.
    sigma: standard deviation in pixels.

  Returns:
    The blurred image (equal to the reference to float32 rounding).
  """
  kernel = _blur_kernel(kernel_size, sigma)
  taps = tf.shape(kernel)[0]
  h, w, c = image.shape
  rows = tf.reshape(image, [1, h, 1, w * c])
  blur_v = tf.tile(tf.reshape(kernel, [taps, 1, 1, 1]), [1, 1, w * c, 1])
  out = tf.nn.depthwise_conv2d(rows, blur_v, [1, 1, 1, 1], "SAME")
  blur_h = tf.tile(tf.reshape(kernel, [1, taps, 1, 1]), [1, 1, c, 1])
  out = tf.nn.depthwise_conv2d(tf.reshape(out, [1, h, w, c]), blur_h,
                               [1, 1, 1, 1], "SAME")
  return tf.ensure_shape(out[0], image.shape)


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """Luma grayscale as three equal channels, without a matrix product."""
  w = GRAY_WEIGHTS
  gray = image[..., 0:1] * w[0] + image[..., 1:2] * w[1] + image[..., 2:3] * w[2]
  return tf.tile(gray, [1, 1, 3])


def color_distortion(image: tf.Tensor, seed: Seed, aug_cfg: Any) -> tf.Tensor:
  """`photometric.random_color_distortion` (same seeds) with the cheap grayscale."""
  return photometric.random_color_distortion(image, seed, aug_cfg,
                                             grayscale_fn=to_grayscale)


def resize_crop(crop: tf.Tensor, size: int) -> tf.Tensor:
  """The reference's bicubic resize of a crop, as float32 in [0, 1] scale.

  Args:
    crop: uint8 [h, w, 3] or float32 in [0, 1].
    size: output side.

  Returns:
    float32 [size, size, 3] (not clipped: bicubic overshoots).
  """
  image = augment.resize(crop, size)
  if crop.dtype == tf.uint8:
    # Bicubic resize is linear: resize the uint8 crop, then scale to [0, 1].
    image = image * (1.0 / 255.0)
  return tf.ensure_shape(image, [size, size, 3])


def augment_resized(image: tf.Tensor, seeds: List[Seed], size: int,
                    aug_cfg: Any, on_device: bool) -> tf.Tensor:
  """Flip / colour / blur / clip of a resized view (nothing for on_device).

  Args:
    image: float32 [size, size, 3], the resized crop.
    seeds: the view's (crop, flip, colour, blur) seeds.
    size: output side.
    aug_cfg: the `config.aug` ConfigDict.
    on_device: return the view as it is (the rest runs in the train step).

  Returns:
    float32 [size, size, 3].
  """
  if on_device:
    return image  # unclipped, as the reference before its photometric ops
  _, flip_seed, color_seed, blur_seed = seeds
  image = augment.random_flip(image, flip_seed,
                              photometric.op_prob(aug_cfg, "flip"))
  image = color_distortion(image, color_seed, aug_cfg)
  image = tf.ensure_shape(image, [size, size, 3])
  if aug_cfg.blur:
    apply_seed, sigma_seed = tf.unstack(
        tf.random.experimental.stateless_split(blur_seed, 2))
    kernel = photometric.blur_kernel_size(size, aug_cfg.blur_kernel_frac)
    sigma = tf.random.stateless_uniform([], sigma_seed,
                                        aug_cfg.blur_sigma_min,
                                        aug_cfg.blur_sigma_max)
    blur = functools.partial(fast_blur, kernel_size=kernel, sigma=sigma)
    image = photometric.random_apply(blur, aug_cfg.blur_prob, apply_seed,
                                     image)
  return tf.clip_by_value(image, 0.0, 1.0)


def finish_view(crop: tf.Tensor, seeds: List[Seed], size: int, aug_cfg: Any,
                on_device: bool) -> tf.Tensor:
  """Resize, then flip / colour / blur / clip (or only resize for on_device).

  Args:
    crop: the view's crop, uint8 [h, w, 3] or float32 in [0, 1].
    seeds: the view's (crop, flip, colour, blur) seeds.
    size: output side.
    aug_cfg: the `config.aug` ConfigDict.
    on_device: stop after the resize (the rest runs in the train step).

  Returns:
    float32 [size, size, 3].
  """
  return augment_resized(resize_crop(crop, size), seeds, size, aug_cfg,
                         on_device)


def decoded_views(image: tf.Tensor, key: Seed, size: int, aug_cfg: Any,
                  on_device: bool = False) -> tf.Tensor:
  """All views of an already decoded image.

  Args:
    image: uint8 [H, W, 3], or float32 in [0, 1] (e.g. cached pixels).
    key: int tensor [2], the example's augmentation key.
    size: output side.
    aug_cfg: the `config.aug` ConfigDict.
    on_device: only crop and resize.

  Returns:
    float32 [V, size, size, 3].
  """
  out = []
  for seeds in view_seeds(key, int(aug_cfg.num_views)):
    begin, box = augment.sample_crop_box(tf.shape(image), seeds[0], aug_cfg)
    crop = tf.slice(image, begin, box)
    out.append(finish_view(crop, seeds, size, aug_cfg, on_device))
  return tf.stack(out)


# libjpeg's decode scales (`tf.io.decode_jpeg(ratio=...)`): 1/1 ... 1/8.
DCT_RATIOS = (1, 2, 4, 8)


def dct_level(crop_sizes: List[tf.Tensor], size: int) -> tf.Tensor:
  """Index into DCT_RATIOS of the largest r with every crop >= r x `size`.

  Decoding at 1/r then never leaves a crop smaller than the output on
  either axis (the final resize still shrinks or keeps it), so no view is
  upsampled.

  Args:
    crop_sizes: the views' crop sizes, int [>= 2] each (height, width, ...).
    size: output side.

  Returns:
    int32 scalar in [0, len(DCT_RATIOS)).
  """
  shortest = tf.reduce_min(tf.stack([tf.reduce_min(c[:2])
                                     for c in crop_sizes]))
  return tf.reduce_sum(tf.cast(
      shortest >= tf.constant(DCT_RATIOS[1:], tf.int32) * size, tf.int32))


def _window_views(encoded: tf.Tensor, shape: tf.Tensor, boxes, lo, hi,
                  size: int, ratio: int) -> List[tf.Tensor]:
  """Decodes the union window at 1/ratio scale; every view's resized crop.

  At ratio 1 the crops are cut from the window and resized exactly as the
  reference does. At ratio r > 1 the window is the scaled decode
  (libjpeg's output is ceil(H / r) x ceil(W / r), pixel i covering the
  original's [r i, r i + r)) and a box [b, b + n) is cut as
  [floor(b / r + 1/2), floor((b + n) / r + 1/2)): its edges move by at most
  r / 2 original pixels, under half an output pixel as n >= r x size.

  Returns:
    float32 [size, size, 3] per view, in [0, 1] scale, not clipped.
  """
  scaled_hw = (shape[:2] + ratio - 1) // ratio
  w_lo = lo // ratio
  w_hi = tf.minimum((hi + ratio - 1) // ratio, scaled_hw)
  window = tf.io.decode_and_crop_jpeg(
      encoded, tf.concat([w_lo, w_hi - w_lo], 0), channels=3, ratio=ratio,
      dct_method=imagefiles.JPEG_DCT_METHOD)
  out = []
  for begin, box in boxes:
    if ratio == 1:
      start, extent = begin[:2] - lo, box[:2]
    else:
      nearest = lambda v: (2 * v + ratio) // (2 * ratio)  # floor(v/r + 1/2)
      first, last = nearest(begin[:2]), nearest(begin[:2] + box[:2])
      first = tf.clip_by_value(first, w_lo, w_hi - 1)
      last = tf.clip_by_value(last, first + 1, w_hi)
      start, extent = first - w_lo, last - first
    crop = tf.slice(window, tf.concat([start, [0]], 0),
                    tf.concat([extent, [3]], 0))
    out.append(resize_crop(crop, size))
  return out


def jpeg_crop_boxes(encoded: tf.Tensor, key: Seed, aug_cfg: Any):
  """The views' seeds and crop boxes from the JPEG header, and their union.

  Args:
    encoded: scalar string tensor holding a JPEG.
    key: int tensor [2], the example's augmentation key.
    aug_cfg: the `config.aug` ConfigDict.

  Returns:
    (shape [H, W, 3], per-view seeds, per-view (begin, size) boxes, union
    window start [y, x], union window end [y, x]); int32.
  """
  hw = tf.io.extract_jpeg_shape(encoded, output_type=tf.int32)[:2]
  shape = tf.concat([hw, [3]], 0)
  all_seeds = view_seeds(key, int(aug_cfg.num_views))
  boxes = [augment.sample_crop_box(shape, s[0], aug_cfg) for s in all_seeds]
  boxes = [(tf.cast(b, tf.int32), tf.cast(n, tf.int32)) for b, n in boxes]
  tops = tf.stack([b[0][:2] for b in boxes])  # [V, 2] (y, x)
  ends = tf.stack([b[0][:2] + b[1][:2] for b in boxes])
  return (shape, all_seeds, boxes, tf.reduce_min(tops, 0),
          tf.reduce_max(ends, 0))


def _jpeg_views(encoded: tf.Tensor, key: Seed, size: int, aug_cfg: Any,
                on_device: bool, dct: bool = False) -> tf.Tensor:
  """Views of a JPEG, decoding only the union window of their crops."""
  shape, all_seeds, boxes, lo, hi = jpeg_crop_boxes(encoded, key, aug_cfg)
  views_at = functools.partial(_window_views, encoded, shape, boxes, lo, hi,
                               size)
  if dct:
    resized = tf.switch_case(dct_level([n for _, n in boxes], size),
                             [functools.partial(views_at, r)
                              for r in DCT_RATIOS])
  else:
    resized = views_at(1)
  return tf.stack([augment_resized(image, seeds, size, aug_cfg, on_device)
                   for image, seeds in zip(resized, all_seeds)])


def encoded_views(encoded: tf.Tensor, key: Seed, size: int, aug_cfg: Any,
                  on_device: bool = False, dct: bool = False) -> tf.Tensor:
  """All views of an encoded image; JPEGs decode only their crops' window.

  Args:
    encoded: scalar string tensor (JPEG or any `tf.io.decode_image` format).
    key: int tensor [2], the example's augmentation key.
    size: output side.
    aug_cfg: the `config.aug` ConfigDict.
    on_device: only crop and resize.
    dct: decode large JPEG windows at 1/2, 1/4 or 1/8 scale
      (`data.fast_jpeg_dct`, see the module docstring).

  Returns:
    float32 [V, size, size, 3].
  """
  views = int(aug_cfg.num_views)
  out = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: _jpeg_views(encoded, key, size, aug_cfg, on_device, dct),
      lambda: decoded_views(sources.decode_image(encoded), key,
                            size, aug_cfg, on_device))
  return tf.ensure_shape(out, [views, size, size, 3])
