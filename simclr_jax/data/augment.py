"""Stateless SimCLR augmentations: crop, flip and the three preprocessings.

Colour and blur ops live in `photometric`. Every random decision takes an
explicit seed (an int tensor of shape [2]), so the same seed always produces
the same view: this is what makes the input pipeline resumable without
replaying skipped batches. Images are float32 in [0, 1] with three channels;
there is no mean/std normalisation (as in the official SimCLR `data_util.py`).
"""

from typing import Any, Tuple

from simclr_jax.data.tf_host import tf

from simclr_jax import config as config_lib
from simclr_jax.data import photometric

# Fixed constants of the official `crop_and_resize`: they are part of the
# definition of the SimCLR crop, not tuning knobs.
CROP_MIN_OBJECT_COVERED = 0.1
CROP_MAX_ATTEMPTS = 100

# Allowed number of views per image.
MIN_VIEWS = 2
MAX_VIEWS = 16

Seed = photometric.Seed


def _check(cond: bool, field: str, value: Any, allowed: str) -> None:
  if not cond:
    config_lib.fail(f"aug.{field}", value, allowed)


def check_aug_config(aug_cfg: Any) -> None:
  """Validates the augmentation config.

  Args:
    aug_cfg: the `config.aug` ConfigDict.

  Raises:
    ValueError: naming the first invalid field, its value and what is allowed.
  """
  c = aug_cfg
  _check(MIN_VIEWS <= int(c.num_views) <= MAX_VIEWS, "num_views", c.num_views,
         f"allowed {MIN_VIEWS}..{MAX_VIEWS}")
  _check(0 < c.crop_area_min <= c.crop_area_max <= 1, "crop_area_min",
         (c.crop_area_min, c.crop_area_max),
         "need 0 < crop_area_min <= crop_area_max <= 1")
  _check(0 < c.aspect_min <= c.aspect_max, "aspect_min",
         (c.aspect_min, c.aspect_max), "need 0 < aspect_min <= aspect_max")
  for name in ("flip_prob", "color_prob", "grayscale_prob", "blur_prob"):
    _check(0 <= c[name] <= 1, name, c[name], "a probability in [0, 1]")
  _check(c.color_strength >= 0, "color_strength", c.color_strength,
         "must be >= 0")
  _check(0 < c.blur_sigma_min <= c.blur_sigma_max, "blur_sigma_min",
         (c.blur_sigma_min, c.blur_sigma_max),
         "need 0 < blur_sigma_min <= blur_sigma_max")
  _check(c.blur_kernel_frac >= 0, "blur_kernel_frac", c.blur_kernel_frac,
         "must be >= 0")
  _check(0 < c.eval_crop_proportion <= 1, "eval_crop_proportion",
         c.eval_crop_proportion, "allowed (0, 1]")


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to `size` x `size` (official SimCLR resize).

  Args:
    image: float32 [H, W, C].
    size: output side in pixels.

  Returns:
    float32 [size, size, C] (not clipped; bicubic can overshoot).
  """
  return tf.image.resize([image], [size, size],
                         method=tf.image.ResizeMethod.BICUBIC)[0]


def sample_crop_box(image_shape: tf.Tensor, seed: Seed,
                    aug_cfg: Any) -> Tuple[tf.Tensor, tf.Tensor]:
  """Samples the crop box, as the official `distorted_bounding_box_crop`.

  The whole image is the object box; its crop must cover at least
  `CROP_MIN_OBJECT_COVERED` of it, with area fraction and aspect ratio
  (width / height) in the configured ranges; after `CROP_MAX_ATTEMPTS`
  failures the whole image is used. With `aug.crop` off the box is always
  the central square of side min(H, W): the whole image when it is square
  (the official `crop=False`), and the proportions kept when it is not, as
  at evaluation.

  Args:
    image_shape: int tensor [height, width, channels].
    seed: int tensor of shape [2].
    aug_cfg: config with crop_area_min/max and aspect_min/max.

  Returns:
    (begin, size): int32 tensors [y, x, 0] and [h, w, -1].
  """
  if not aug_cfg.get("crop", True):  # configs written before the switch
    shape = tf.cast(image_shape, tf.int32)
    side = tf.minimum(shape[0], shape[1])
    # Offsets rounded as the evaluation crop's: ((H - h) + 1) // 2.
    return (tf.stack([(shape[0] - side + 1) // 2,
                      (shape[1] - side + 1) // 2, 0]),
            tf.stack([side, side, -1]))
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=whole, seed=seed,
      min_object_covered=CROP_MIN_OBJECT_COVERED,
      aspect_ratio_range=(aug_cfg.aspect_min, aug_cfg.aspect_max),
      area_range=(aug_cfg.crop_area_min, aug_cfg.crop_area_max),
      max_attempts=CROP_MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
  return begin, size


def random_resized_crop(image: tf.Tensor, seed: Seed, size: int,
                        aug_cfg: Any) -> tf.Tensor:
  """Random crop (area and aspect ranges) then bicubic resize to `size`.

  Args:
    image: float32 [H, W, 3].
    seed: int tensor of shape [2].
    size: output side in pixels.
    aug_cfg: config with crop_area_min/max and aspect_min/max.

  Returns:
    float32 [size, size, 3].
  """
  begin, box = sample_crop_box(tf.shape(image), seed, aug_cfg)
  crop = tf.image.crop_to_bounding_box(image, begin[0], begin[1], box[0],
                                       box[1])
  return resize(crop, size)


def random_flip(image: tf.Tensor, seed: Seed, prob: float) -> tf.Tensor:
  """Horizontal flip with probability `prob`.

  Args:
    image: [H, W, C].
    seed: int tensor of shape [2].
    prob: flip probability.

  Returns:
    The flipped or unchanged image.
  """
  return photometric.random_apply(tf.image.flip_left_right, prob, seed, image)


def _finish(image: tf.Tensor, size: int) -> tf.Tensor:
  image = tf.clip_by_value(image, 0.0, 1.0)
  return tf.ensure_shape(image, [size, size, 3])


def preprocess_pretrain(image: tf.Tensor, seed: Seed, size: int,
                        aug_cfg: Any) -> tf.Tensor:
  """One SimCLR view: crop -> flip -> colour distortion -> (blur) -> clip.

  Args:
    image: float32 [H, W, 3] in [0, 1], any size.
    seed: int tensor of shape [2]; the whole view is a function of it.
    size: output side in pixels.
    aug_cfg: the `config.aug` ConfigDict.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  crop_seed, flip_seed, color_seed, blur_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  image = random_resized_crop(image, crop_seed, size, aug_cfg)
  image = random_flip(image, flip_seed, photometric.op_prob(aug_cfg, "flip"))
  image = photometric.random_color_distortion(image, color_seed, aug_cfg)
  image = tf.ensure_shape(image, [size, size, 3])
  if aug_cfg.blur:
    image = photometric.random_blur(image, blur_seed, aug_cfg)
  return _finish(image, size)


def preprocess_supervised_train(image: tf.Tensor, seed: Seed, size: int,
                                aug_cfg: Any) -> tf.Tensor:
  """Crop and flip only (linear eval, fine-tuning, distillation).

  Args:
    image: float32 [H, W, 3] in [0, 1].
    seed: int tensor of shape [2].
    size: output side in pixels.
    aug_cfg: the `config.aug` ConfigDict (crop ranges and flip_prob).

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  image = random_resized_crop(image, crop_seed, size, aug_cfg)
  image = random_flip(image, flip_seed, photometric.op_prob(aug_cfg, "flip"))
  return _finish(image, size)


def center_crop_shape(height: tf.Tensor, width: tf.Tensor,
                      crop_proportion: float) -> Tuple[tf.Tensor, tf.Tensor]:
  """Square central crop keeping `crop_proportion` of the shorter side.

  Official `_compute_crop_shape` for a square output (aspect ratio 1).

  Args:
    height: image height (int tensor).
    width: image width (int tensor).
    crop_proportion: fraction kept along the less-cropped side.

  Returns:
    (crop_height, crop_width) int32 tensors.
  """
  h = tf.cast(height, tf.float32)
  w = tf.cast(width, tf.float32)
  wider_than_image = lambda: tf.math.rint(crop_proportion * w)
  image_wider = lambda: tf.math.rint(crop_proportion * h)
  side = tf.cond(1.0 > w / h, wider_than_image, image_wider)
  side = tf.cast(side, tf.int32)
  return side, side


def preprocess_eval(image: tf.Tensor, size: int,
                    crop_proportion: float) -> tf.Tensor:
  """Official evaluation preprocessing: central square crop, bicubic resize.

  The crop is the centre square of side `crop_proportion` x the shorter
  side, so an image of any aspect ratio keeps its proportions (a 40 x 160
  image gives its central 40 x 40 square at 1.0, never a squashed copy); for
  a square image at 1.0 it is the whole image.

  Args:
    image: float32 [H, W, 3] in [0, 1].
    size: output side in pixels.
    crop_proportion: fraction of the shorter side kept (0.875 for ImageNet).

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  shape = tf.shape(image)
  crop_h, crop_w = center_crop_shape(shape[0], shape[1], crop_proportion)
  # Official rounding of the offsets: ((H - h) + 1) // 2.
  top = (shape[0] - crop_h + 1) // 2
  left = (shape[1] - crop_w + 1) // 2
  image = tf.image.crop_to_bounding_box(image, top, left, crop_h, crop_w)
  return _finish(resize(image, size), size)
