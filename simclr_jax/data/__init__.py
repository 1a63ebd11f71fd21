"""Input pipeline: sources, stateless SimCLR augmentations, tf.data iterators.

TensorFlow is used only for tf.data on the host, so accelerators are hidden
from it as soon as this package is imported (before any TF op runs); JAX owns
the GPUs/TPUs.
"""

from simclr_jax.engine import logs as _logs

with _logs.native_stderr_filtered():  # TensorFlow's native start-up lines
  import tensorflow as tf  # pylint: disable=g-import-not-at-top


def _hide_accelerators_from_tensorflow() -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # Already initialised, or no such device type in this build.
      pass


_hide_accelerators_from_tensorflow()

# pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax.data.augment import check_aug_config
from simclr_jax.data.augment import preprocess_eval
from simclr_jax.data.augment import preprocess_pretrain
from simclr_jax.data.augment import preprocess_supervised_train
from simclr_jax.data.pipeline import class_balanced_subset
from simclr_jax.data.pipeline import make_eval_iterator
from simclr_jax.data.pipeline import make_pretrain_iterator
from simclr_jax.data.pipeline import make_supervised_iterator
from simclr_jax.data.pipeline import num_eval_batches
from simclr_jax.data.sources import DatasetInfo
from simclr_jax.data.sources import check_data_config
from simclr_jax.data.sources import check_split_readable
from simclr_jax.data.sources import dataset_info
from simclr_jax.data.sources import load_labels
from simclr_jax.data.sources import shard_sizes

__all__ = [
    "DatasetInfo",
    "check_aug_config",
    "check_data_config",
    "check_split_readable",
    "class_balanced_subset",
    "dataset_info",
    "load_labels",
    "make_eval_iterator",
    "make_pretrain_iterator",
    "make_supervised_iterator",
    "num_eval_batches",
    "preprocess_eval",
    "preprocess_pretrain",
    "preprocess_supervised_train",
    "shard_sizes",
]
