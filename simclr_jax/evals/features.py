"""Feature extraction over a whole split, in canonical example order.

The kNN monitor, the fast probe and the export round trip all need the
representation of every example of a split exactly once. Features are
computed by a mapped step over the padded eval batches, gathered from all
processes, and put back into the split's canonical order with the padding
rows removed, so the result is the same on any number of hosts and devices.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from simclr_jax import data as data_lib
from simclr_jax import parallel
from simclr_jax.engine import progress

AXIS = parallel.AXIS
FeatureFn = Callable[[Any, jax.Array], jax.Array]


def encoder_feature_fn(model) -> FeatureFn:
  """(variables, images) -> the representation h, in inference mode."""
  def fn(variables, images):
    return model.apply(variables, images, False, method=model.encode)
  return fn


def pixel_feature_fn(variables: Any, images: jax.Array) -> jax.Array:
  """(variables, images) -> flattened pixels (the raw-pixel baseline)."""
  del variables
  return images.reshape((images.shape[0], -1))


def make_feature_step(feature_fn: FeatureFn, mesh) -> Callable:
  """Returns jit(shard_map(feature_fn)): replicated variables, split images."""
  mapped = parallel.per_replica(feature_fn, mesh, in_specs=(P(), P(AXIS)),
                                out_specs=P(AXIS))
  return jax.jit(mapped)


def global_row_ids(data_cfg: ml_collections.ConfigDict, split: str,
                   global_batch: int) -> np.ndarray:
  """Canonical example index of every row of the gathered eval batches.

  `make_eval_iterator` gives process p the examples p, p+P, ... (digits,
  folders) or a contiguous slice (TFDS), padded to the same number of local
  batches; a global batch is the concatenation of the processes' local ones.

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: split name.
    global_batch: the global eval batch size.

  Returns:
    int64 [num_batches * global_batch]; -1 on padding rows.
  """
  pc = jax.process_count()
  sizes = data_lib.shard_sizes(data_cfg, split, pc)
  n = sum(sizes)
  if data_cfg.source == "tfds":
    starts = np.cumsum([0] + list(sizes[:-1]))
    local = [np.arange(s, s + k) for s, k in zip(starts, sizes)]
  else:
    local = [np.arange(n)[p::pc] for p in range(pc)]
  b = global_batch // pc
  nb = data_lib.num_eval_batches(data_cfg, split, global_batch, pc)
  padded = [np.concatenate([ids, -np.ones(nb * b - len(ids), np.int64)])
            for ids in local]
  return np.stack(padded).reshape(pc, nb, b).transpose(1, 0, 2).reshape(-1)


def extract(feature_fn: FeatureFn, variables: Any,
            config: ml_collections.ConfigDict, split: str, mesh,
            max_points: Optional[int] = None,
            step_fn: Optional[Callable] = None,
            view: Optional[int] = None
            ) -> Tuple[np.ndarray, np.ndarray]:
  """Features and labels of every example of `split`, in canonical order.

  The one feature extractor: kNN, the fast probe, the embedding map and the
  export round trip all read features through it. Images get the evaluation
  preprocessing (centre crop + resize), so the features of a split are
  deterministic.

  Args:
    feature_fn: (variables, images) -> [b, d] features for one replica.
    variables: model variables, replicated on `mesh` (or host arrays).
    config: the full configuration (data, aug, eval.batch_size).
    split: split name.
    mesh: the device mesh.
    max_points: stop once at least this many examples are read and return
      the first `max_points` of them (None = the whole split).
    step_fn: `make_feature_step(feature_fn, mesh)` when the caller keeps one
      compiled across calls.
    view: None for the evaluation crop; k for the k-th augmented view of
      each example (deterministic per example, see `make_eval_iterator`).

  Returns:
    (features float32 [N, d], labels int32 [N]) on every process.
  """
  step = step_fn or make_feature_step(feature_fn, mesh)
  batch_size = config.eval.batch_size
  feats, labels, valid = [], [], 0
  batches = progress.track(
      data_lib.make_eval_iterator(config.data, config.aug, split, batch_size,
                                  view=view, seed=config.seed),
      total=data_lib.num_eval_batches(config.data, split, batch_size),
      desc=f"features of {split}", unit="batches",
      enabled=jax.process_index() == 0)
  for batch in batches:
    out = step(variables, parallel.host_to_global(mesh, batch["images"]))
    lab, mask = parallel.host_to_global(mesh, (batch["labels"],
                                               batch["mask"]))
    # Tiled gather: every process receives the whole global batch.
    out, lab, mask = multihost_utils.process_allgather((out, lab, mask),
                                                       tiled=True)
    feats.append(np.asarray(out, np.float32))
    labels.append(np.asarray(lab, np.int32))
    valid += int(np.asarray(mask).sum())
    if max_points is not None and valid >= max_points:
      break  # every process reads the same number of batches
  ids = global_row_ids(config.data, split, batch_size)
  feats, labels = np.concatenate(feats), np.concatenate(labels)
  if max_points is None and len(ids) != len(feats):
    raise ValueError(f"split {split!r}: {len(feats)} feature rows but "
                     f"{len(ids)} expected from the shard sizes")
  ids = ids[:len(feats)]
  keep = ids >= 0
  order = np.argsort(ids[keep], kind="stable")
  feats, labels = feats[keep][order], labels[keep][order]
  if max_points is not None:
    feats, labels = feats[:max_points], labels[:max_points]
  return feats, labels


def labelled_indices(config: ml_collections.ConfigDict,
                     labels: np.ndarray) -> np.ndarray:
  """Indices of the class-balanced labelled subset (`eval.label_fraction`).

  Args:
    config: the full configuration.
    labels: int [N] labels of the train split in canonical order.

  Returns:
    Sorted indices; all of them when the fraction is 1.
  """
  fraction = float(config.eval.label_fraction)
  if fraction >= 1.0:
    return np.arange(len(labels), dtype=np.int64)
  return data_lib.class_balanced_subset(labels, fraction,
                                        int(config.eval.label_seed))


def split_arrays(config: ml_collections.ConfigDict, feature_fn: FeatureFn,
                 variables: Any, mesh, step_fn: Optional[Callable] = None
                 ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Features of the labelled train subset and of the eval split.

  Args:
    config: the full configuration.
    feature_fn: (variables, images) -> features for one replica.
    variables: replicated model variables.
    mesh: the device mesh.
    step_fn: a compiled `make_feature_step(feature_fn, mesh)` to reuse.

  Returns:
    {'train': (x, y) restricted to the labelled subset, 'eval': (x, y)}.
  """
  step_fn = step_fn or make_feature_step(feature_fn, mesh)
  x_tr, y_tr = extract(feature_fn, variables, config, config.data.train_split,
                       mesh, step_fn=step_fn)
  keep = labelled_indices(config, y_tr)
  x_ev, y_ev = extract(feature_fn, variables, config, config.data.eval_split,
                       mesh, step_fn=step_fn)
  return {"train": (x_tr[keep], y_tr[keep]), "eval": (x_ev, y_ev)}


class SplitFeatures:
  """`split_arrays` of one model, computed once per step and shared.

  The kNN monitor and the fast probe read the same features; the feature
  step is compiled once for the whole run.
  """

  # The config it is given (registry.sliced): the splits, the evaluation
  # crop and batch, the label subset, and the seed of the views.
  sections = ("eval", "data", "aug", "seed")

  def __init__(self, config: ml_collections.ConfigDict,
               feature_fn: FeatureFn, mesh):
    """Builds the feature step (compiled on first use).

    Args:
      config: the sections `sections` names.
      feature_fn: (variables, images) -> features for one replica.
      mesh: the device mesh.
    """
    self._config, self._fn, self._mesh = config, feature_fn, mesh
    self._step = make_feature_step(feature_fn, mesh)
    self._cached_step, self._arrays = None, None

  def get(self, variables: Any, step: int
          ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The arrays of `variables` after training step `step` (cached per step)."""
    if self._cached_step != step:
      self._arrays = split_arrays(self._config, self._fn, variables,
                                  self._mesh, self._step)
      self._cached_step = step
    return self._arrays
