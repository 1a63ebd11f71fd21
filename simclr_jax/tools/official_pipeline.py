"""The official TF2 SimCLR augmentation, timed over the same files as ours.

The benchmark's `--official_code=PATH` names the user's own checkout of
google-research/simclr (its root or its `tf2/` folder); nothing is
downloaded. Its `data_util.py` is loaded as it is and run as the official
pretraining input does: decode, two views of `preprocess_for_train`
(random-resized crop, flip, colour jitter, clip) concatenated on channels,
batching, then `batch_random_blur` over the two views of the batch (which
the official code runs in the model; here on the host, so that both
pipelines deliver blurred views).
"""

import importlib.util
import os
from typing import Any, Iterator, List

from simclr_jax import config as config_lib

# The functions of the official data_util.py the comparison calls.
_REQUIRED = ("preprocess_for_train", "batch_random_blur")


def load_data_util(path: str) -> Any:
  """Imports `data_util.py` from a checkout of the official code.

  Args:
    path: the checkout's root or its `tf2/` folder.

  Returns:
    The loaded module.

  Raises:
    ConfigError: no data_util.py there, or it lacks the official functions.
  """
  for candidate in (os.path.join(path, "data_util.py"),
                    os.path.join(path, "tf2", "data_util.py")):
    if os.path.isfile(candidate):
      break
  else:
    config_lib.fail("--official_code", path, "holds neither data_util.py nor "
                    "tf2/data_util.py (a checkout of google-research/simclr)")
  spec = importlib.util.spec_from_file_location("official_simclr_data_util",
                                                candidate)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  missing = [f for f in _REQUIRED if not hasattr(module, f)]
  if missing:
    config_lib.fail("--official_code", path, f"{candidate} has no {missing}")
  return module


def official_batches(data_util: Any, files: List[str], global_batch: int,
                     size: int, color_strength: float, blur: bool,
                     seed: int = 0) -> Iterator[Any]:
  """Two-view batches made by the official augmentation code.

  Args:
    data_util: the module from `load_data_util`.
    files: image files (JPEG or PNG).
    global_batch: images per batch.
    size: output side.
    color_strength: the official `color_jitter_strength`.
    blur: apply `batch_random_blur` to the views (p = 0.5 each).
    seed: file-order shuffling seed.

  Returns:
    An infinite iterator of float32 [b, size, size, 6] NumPy batches.
  """
  from simclr_jax.data import tf_host  # pylint: disable=g-import-not-at-top
  tf = tf_host.tf

  def views(path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                               expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    xs = [data_util.preprocess_for_train(
        image, size, size, color_jitter_strength=color_strength, crop=True,
        flip=True) for _ in range(2)]
    return tf.concat(xs, -1)

  def blurred(images):
    pair = data_util.batch_random_blur(tf.split(images, 2, axis=-1), size,
                                       size)
    return tf.concat(pair, -1)

  ds = tf.data.Dataset.from_tensor_slices(files).repeat()
  ds = ds.shuffle(len(files), seed=seed)
  ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(global_batch, drop_remainder=True)
  if blur:
    ds = ds.map(blurred, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()
