"""Where the host's time goes per image in the reference input pipeline.

The pipeline is timed as a series of prefixes over the same files, each in
tf.data with the same parallelism as training: read + decode; then the two
views' crop and resize; then flip; each colour op; grayscale; blur; then
batching; then the copy of each batch to the devices. A stage's cost is the
wall time per image of its prefix minus that of the prefix before it (with
the pipeline's threads, so the figures add up to the pipeline's time per
image; noise can make a cheap stage read slightly negative). Every op is
applied to every view here (probability 1), so each row is the op's full
cost; the last column weighs it by the configured probability.
"""

import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

# (name, configured probability of the op: aug field or None for always).
STAGES: Tuple[Tuple[str, Any], ...] = (
    ("read + decode", None), ("crop + resize (2 views)", None),
    ("flip", "flip_prob"), ("brightness", "color_prob"),
    ("contrast", "color_prob"), ("saturation", "color_prob"),
    ("hue", "color_prob"), ("grayscale", "grayscale_prob"),
    ("blur", "blur_prob"), ("batching", None),
    ("host-to-device copy", None))
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


def _time_prefix(files: List[str], num_ops: int, size: int, aug_cfg: Any,
                 batch: int, num_images: int, copy: bool) -> float:
  """Seconds per image of the pipeline up to op `num_ops` (-1: decode only)."""
  import jax  # pylint: disable=g-import-not-at-top
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
            num_images: int) -> List[Dict[str, float]]:
  """Per-image cost of each stage of the reference host pipeline.

  Args:
    files: image files to read (e.g. the benchmark's sample JPEGs).
    size: output side of the views.
    aug_cfg: the `config.aug` ConfigDict (strengths, blur kernel, the
      probabilities of the last column).
    batch: images per batch for the batching and copy stages.
    num_images: images timed per prefix.

  Returns:
    [{'stage', 'ms_per_image', 'cumulative_ms', 'expected_ms'}] in order.
  """
  cumulative, rows, before = [], [], 0.0
  num_ops = len(_view_ops(size, aug_cfg))
  for k, (name, prob_field) in enumerate(STAGES):
    if k <= num_ops:
      t = _time_prefix(files, k, size, aug_cfg, 0, num_images, False)
    else:  # batching, then the copy of each batch
      t = _time_prefix(files, num_ops, size, aug_cfg, batch, num_images,
                       copy=name == "host-to-device copy")
    cumulative.append(t * 1e3)
    cost = cumulative[-1] - before
    before = cumulative[-1]
    p = 1.0 if prob_field is None else float(aug_cfg[prob_field])
    rows.append({"stage": name, "ms_per_image": cost,
                 "cumulative_ms": cumulative[-1], "expected_ms": cost * p})
  return rows


def print_profile(rows: List[Dict[str, float]]) -> None:
  """Prints the stages as a table (ms of host wall time per image)."""
  print("host profile (reference ops, every op applied; ms per image):")
  print(f"  {'stage':26s} {'ms/image':>9s} {'cumulative':>11s} "
        f"{'x configured p':>15s}")
  for r in rows:
    print(f"  {r['stage']:26s} {r['ms_per_image']:9.2f} "
          f"{r['cumulative_ms']:11.2f} {r['expected_ms']:15.2f}")
  total = np.asarray([r["ms_per_image"] for r in rows]).sum()
  print(f"  total {total:.2f} ms per image = {1e3 / max(total, 1e-9):.1f} "
        "images/s with every op applied")
