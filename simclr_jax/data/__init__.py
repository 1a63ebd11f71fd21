"""Input pipeline: sources, stateless SimCLR augmentations, iterators.

Importing this package does not import TensorFlow. The tf.data modules
(`sources`, `folders`, `pipeline`, `augment`, `photometric`, `fast`, and the
augmentation `preview`) load on first use, when a pipeline of a file or TFDS
source is built, and hide the accelerators from TensorFlow before any TF op
runs (`tf_host`); JAX owns the GPUs/TPUs.
`data.source='synthetic'` is served by `synthetic` with JAX alone, so the
engine and every mode run where TensorFlow is not installed.

The functions below that take `data_cfg` pick the source's implementation;
the augmentation functions are those of `augment`, loaded when first used.
"""

import importlib
from typing import Any, Iterator, List, Optional

import numpy as np

from simclr_jax.data.common import DatasetInfo
from simclr_jax.data.common import class_balanced_subset

SYNTHETIC = "synthetic"
# Public names of the tf.data modules, loaded on first attribute access.
_TF_NAMES = {"check_aug_config": "augment", "preprocess_eval": "augment",
             "preprocess_pretrain": "augment",
             "preprocess_supervised_train": "augment"}


# Submodules reachable as attributes (`data.sources`) before their import.
_SUBMODULES = ("augment", "augment_jax", "common", "fast", "folders",
               "imagefiles", "photometric", "pipeline", "preview", "sources",
               "synthetic", "tf_host")


def __getattr__(name: str) -> Any:
  """Loads a tf.data name or submodule (and TensorFlow) when first used."""
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name not in _TF_NAMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_TF_NAMES[name]}"),
                  name)
  globals()[name] = value
  return value


def _module(data_cfg: Any, tf_module: str):
  """The module serving `data_cfg`'s source: `synthetic` or a tf.data one."""
  if data_cfg.source == SYNTHETIC:
    return importlib.import_module(f"{__name__}.synthetic")
  return importlib.import_module(f"{__name__}.{tf_module}")


def check_data_config(data_cfg: Any) -> None:
  """Checks the source fields of `config.data` (one line on a bad value)."""
  if data_cfg.source != SYNTHETIC:  # validated with the config (config.py)
    _module(data_cfg, "sources").check_data_config(data_cfg)


def dataset_info(data_cfg: Any) -> DatasetInfo:
  """Split sizes, class count and image shape, without decoding images."""
  return _module(data_cfg, "sources").dataset_info(data_cfg)


def shard_sizes(data_cfg: Any, split: str, process_count: int) -> List[int]:
  """Number of examples of `split` that each process reads."""
  return _module(data_cfg, "sources").shard_sizes(data_cfg, split,
                                                  process_count)


def load_labels(data_cfg: Any, split: str) -> np.ndarray:
  """Labels of the whole split in canonical order: int32 [N]."""
  return _module(data_cfg, "sources").load_labels(data_cfg, split)


def check_split_readable(data_cfg: Any, split: str) -> None:
  """Reads every image file of this process's part of `split` once.

  Only image folders have files to check; see `sources.check_split_readable`.
  """
  if data_cfg.source != SYNTHETIC:
    _module(data_cfg, "sources").check_split_readable(data_cfg, split)


def num_eval_batches(data_cfg: Any, split: str, global_batch: int,
                     process_count: Optional[int] = None) -> int:
  """Number of batches every process yields from `make_eval_iterator`."""
  return _module(data_cfg, "pipeline").num_eval_batches(
      data_cfg, split, global_batch, process_count)


def _synthetic(data_cfg: Any, process_index: Optional[int],
               process_count: Optional[int]):
  """The synthetic module; it makes global arrays for the real processes."""
  if process_index is not None or process_count is not None:
    raise ValueError("the synthetic source makes global batches for all "
                     "processes: process_index/process_count must be None")
  return _module(data_cfg, "")


def make_pretrain_iterator(data_cfg: Any, aug_cfg: Any, global_batch: int,
                           seed: int, start_step: int = 0,
                           process_index: Optional[int] = None,
                           process_count: Optional[int] = None
                           ) -> Iterator[Any]:
  """Infinite iterator of multi-view pretraining batches from `start_step`.

  File and TFDS sources: `pipeline.make_pretrain_iterator` (this process's
  host NumPy batches). Synthetic: global device arrays
  (`synthetic.train_batches`), which `parallel.host_to_global` passes on.
  """
  if data_cfg.source == SYNTHETIC:
    return _synthetic(data_cfg, process_index, process_count).train_batches(
        data_cfg, int(aug_cfg.num_views), global_batch, seed, start_step)
  return _module(data_cfg, "pipeline").make_pretrain_iterator(
      data_cfg, aug_cfg, global_batch, seed, start_step, process_index,
      process_count)


def make_supervised_iterator(data_cfg: Any, aug_cfg: Any, global_batch: int,
                             seed: int, start_step: int = 0,
                             indices: Optional[np.ndarray] = None,
                             process_index: Optional[int] = None,
                             process_count: Optional[int] = None
                             ) -> Iterator[Any]:
  """Infinite iterator of single-image training batches (linear eval,
  fine-tuning, distillation); see `pipeline.make_supervised_iterator`."""
  if data_cfg.source == SYNTHETIC:
    return _synthetic(data_cfg, process_index, process_count).train_batches(
        data_cfg, 0, global_batch, seed, start_step, indices=indices)
  return _module(data_cfg, "pipeline").make_supervised_iterator(
      data_cfg, aug_cfg, global_batch, seed, start_step, indices,
      process_index, process_count)


def make_eval_iterator(data_cfg: Any, aug_cfg: Any, split: str,
                       global_batch: int,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       view: Optional[int] = None, seed: int = 0
                       ) -> Iterator[Any]:
  """Finite, padded and masked iterator over `split` (every example once),
  of evaluation images or, with `view`, of fixed augmented views; see
  `pipeline.make_eval_iterator`."""
  if data_cfg.source == SYNTHETIC:
    return _synthetic(data_cfg, process_index,
                      process_count).make_eval_iterator(
                          data_cfg, split, global_batch, view=view, seed=seed)
  return _module(data_cfg, "pipeline").make_eval_iterator(
      data_cfg, aug_cfg, split, global_batch, process_index, process_count,
      view=view, seed=seed)


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
