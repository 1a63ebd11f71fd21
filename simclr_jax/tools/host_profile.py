"""Where the host's time goes per image in the input pipeline.

The pipeline is timed as a series of prefixes over the same files, each in
tf.data with the same parallelism as training: read + decode; then the two
views' crop and resize; then flip; each colour op; grayscale; blur; then
batching; then the copy of each batch to the devices. A stage's cost is the
wall time per image of its prefix minus that of the prefix before it (with
the pipeline's threads, so the figures add up to the pipeline's time per
image; noise can make a cheap stage read slightly negative). Every op is
applied to every view here (probability 1), so each row is the op's full
cost; the last column weighs it by the configured probability.

Two pipelines are profiled: the reference ops (`STAGES`) and the fast JPEG
path of `data.fast_jpeg` (`FAST_STAGES`: the crop window's decode, crops
resized from uint8, the colour jitter in its random order with random
factors, the trimmed blur).
"""

import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

from simclr_jax.data import imagefiles

# (name, configured probability of the op: aug field or None for always).
STAGES: Tuple[Tuple[str, Any], ...] = (
    ("read + decode", None), ("crop + resize (2 views)", None),
    ("flip", "flip_prob"), ("brightness", "color_prob"),
    ("contrast", "color_prob"), ("saturation", "color_prob"),
    ("hue", "color_prob"), ("grayscale", "grayscale_prob"),
    ("blur", "blur_prob"), ("batching", None),
    ("host-to-device copy", None))
FAST_STAGES: Tuple[Tuple[str, Any], ...] = (
    ("read + decode crop window", None), ("crop + resize (2 views)", None),
    ("flip + draws + clip", "flip_prob"),
    ("colour jitter (4 ops)", "color_prob"),
    ("grayscale", "grayscale_prob"), ("blur", "blur_prob"),
    ("batching", None), ("host-to-device copy", None))
_VIEWS = 2


def _view_ops(size: int, aug_cfg: Any) -> List[Callable]:
  """The per-view ops after decoding, in pipeline order, always applied."""
  from simclr_jax.data import augment  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import common  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import photometric  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import tf_host  # pylint: disable=g-import-not-at-top
  tf = tf_host.tf
  s = float(aug_cfg.color_strength)
  kernel = common.blur_kernel_size(size, float(aug_cfg.blur_kernel_frac))
  return [
      lambda x, k: augment.random_resized_crop(x, k, size, aug_cfg),
      lambda x, k: tf.image.flip_left_right(x),
      lambda x, k: tf.clip_by_value(photometric.adjust_brightness(
          x, tf.constant(1.0 + 0.8 * s * 0.5)), 0.0, 1.0),
      lambda x, k: tf.clip_by_value(photometric.adjust_contrast(
          x, tf.constant(1.0 + 0.8 * s * 0.5)), 0.0, 1.0),
      lambda x, k: tf.clip_by_value(photometric.adjust_saturation(
          x, tf.constant(1.0 + 0.8 * s * 0.5)), 0.0, 1.0),
      lambda x, k: tf.clip_by_value(photometric.adjust_hue(
          x, tf.constant(0.2 * s * 0.5)), 0.0, 1.0),
      lambda x, k: photometric.to_grayscale(x),
      lambda x, k: photometric.gaussian_blur(x, kernel, tf.constant(1.0)),
  ]


def _make_reference(num_ops: int, size: int, aug_cfg: Any) -> Callable:
  """tf.data map function: the reference pipeline up to op `num_ops`."""
  from simclr_jax.data import sources  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import tf_host  # pylint: disable=g-import-not-at-top
  tf = tf_host.tf
  ops = _view_ops(size, aug_cfg)[:max(0, num_ops)]

  def make(path, index):
    image = tf.image.convert_image_dtype(
        sources.decode_image(tf.io.read_file(path)), tf.float32)
    if num_ops < 1:
      return tf.reduce_mean(image)  # forces the decode, nothing more
    views = []
    for v in range(_VIEWS):
      x, key = image, tf.stack([index, tf.constant(v, tf.int64)])
      for op in ops:
        x = op(x, key)
      views.append(tf.ensure_shape(x, [size, size, 3]))
    return tf.stack(views)
  return make


def _make_fast(num_ops: int, size: int, aug_cfg: Any) -> Callable:
  """tf.data map function: the `data.fast_jpeg` path up to op `num_ops`.

  0: the crop window's decode; 1: crops and resizes (the host half of
  `aug.on_device`); then flip, colour jitter, grayscale and blur are turned
  on one by one, each with probability 1.
  """
  from simclr_jax.data import fast  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import tf_host  # pylint: disable=g-import-not-at-top
  tf = tf_host.tf
  aug = aug_cfg.copy_and_resolve_references()
  aug.num_views = _VIEWS
  for k, (field, switch) in enumerate(
      (("flip_prob", "flip"), ("color_prob", "color_jitter"),
       ("grayscale_prob", "grayscale"), ("blur_prob", "blur")), start=2):
    aug[field], aug[switch] = 1.0, num_ops >= k

  def make(path, index):
    encoded = tf.io.read_file(path)
    key = tf.stack([index, tf.constant(0, tf.int64)])
    if num_ops < 1:
      _, _, _, lo, hi = fast.jpeg_crop_boxes(encoded, key, aug)
      window = tf.io.decode_and_crop_jpeg(
          encoded, tf.concat([lo, hi - lo], 0), channels=3,
          dct_method=imagefiles.JPEG_DCT_METHOD)
      return tf.reduce_mean(tf.cast(window, tf.float32))
    return fast.encoded_views(encoded, key, size, aug, on_device=num_ops < 2)
  return make


def _time_pipeline(files: List[str], make: Callable, batch: int,
                   num_images: int, copy: bool) -> float:
  """Seconds per image of `make` mapped over the files (then batched)."""
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax.data import tf_host  # pylint: disable=g-import-not-at-top
  tf = tf_host.tf
  ds = tf.data.Dataset.from_tensor_slices(files).repeat()
  ds = ds.enumerate().map(lambda i, p: make(p, i),
                          num_parallel_calls=tf.data.AUTOTUNE)
  if batch:
    ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  items = ds.as_numpy_iterator()
  per_item = batch or 1
  steps = max(1, num_images // per_item)
  for _ in range(2):  # start-up, thread pools, first buffer fill
    x = next(items)
  t0 = time.perf_counter()
  for _ in range(steps):
    x = next(items)
    if copy:
      jax.block_until_ready(jax.device_put(x))
  return (time.perf_counter() - t0) / (steps * per_item)


def profile(files: List[str], size: int, aug_cfg: Any, batch: int,
            num_images: int, path: str = "reference"
            ) -> List[Dict[str, float]]:
  """Per-image cost of each stage of a host pipeline.

  Args:
    files: image files to read (e.g. the benchmark's sample JPEGs; JPEG
      files for `path='fast'`).
    size: output side of the views.
    aug_cfg: the `config.aug` ConfigDict (strengths, blur kernel, the
      probabilities of the last column).
    batch: images per batch for the batching and copy stages.
    num_images: images timed per prefix.
    path: 'reference' (the reference ops, `STAGES`) or 'fast' (the
      `data.fast_jpeg` path, `FAST_STAGES`).

  Returns:
    [{'stage', 'ms_per_image', 'cumulative_ms', 'expected_ms'}] in order.
  """
  stages, builder = {"reference": (STAGES, _make_reference),
                     "fast": (FAST_STAGES, _make_fast)}[path]
  num_ops = len(stages) - 3  # the last two stages batch and copy
  cumulative, rows, before = [], [], 0.0
  for k, (name, prob_field) in enumerate(stages):
    make = builder(min(k, num_ops), size, aug_cfg)
    if k <= num_ops:
      t = _time_pipeline(files, make, 0, num_images, False)
    else:  # batching, then the copy of each batch
      t = _time_pipeline(files, make, batch, num_images,
                         copy=name == "host-to-device copy")
    cumulative.append(t * 1e3)
    cost = cumulative[-1] - before
    before = cumulative[-1]
    p = 1.0 if prob_field is None else float(aug_cfg[prob_field])
    rows.append({"stage": name, "ms_per_image": cost,
                 "cumulative_ms": cumulative[-1], "expected_ms": cost * p})
  return rows


def print_profile(rows: List[Dict[str, float]],
                  path: str = "reference") -> None:
  """Prints the stages as a table (ms of host wall time per image)."""
  name = {"reference": "reference ops",
          "fast": "data.fast_jpeg path"}.get(path, path)
  print(f"host profile ({name}, every op applied; ms per image):")
  print(f"  {'stage':26s} {'ms/image':>9s} {'cumulative':>11s} "
        f"{'x configured p':>15s}")
  for r in rows:
    print(f"  {r['stage']:26s} {r['ms_per_image']:9.2f} "
          f"{r['cumulative_ms']:11.2f} {r['expected_ms']:15.2f}")
  total = np.asarray([r["ms_per_image"] for r in rows]).sum()
  print(f"  total {total:.2f} ms per image = {1e3 / max(total, 1e-9):.1f} "
        "images/s with every op applied")
