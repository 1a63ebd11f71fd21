"""What the tf.data host pipeline and the JAX side share, without TensorFlow.

The dataset description (`DatasetInfo`), the constants that define the
official SimCLR colour jitter and blur (used by the TF host ops in
`photometric` and by their JAX port in `simclr_jax.data.augment_jax`), the
augmentation ops' on/off switches (`op_prob`), and the
class-balanced labelled subset. Everything here is plain Python and NumPy, so
the engine, the modes and the synthetic source import it on a machine where
TensorFlow is not installed.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

# The official `color_jitter` defines the strength s through these factors:
# brightness/contrast/saturation span 1 +- 0.8 s and hue +- 0.2 s.
BRIGHTNESS_PER_STRENGTH = 0.8
CONTRAST_PER_STRENGTH = 0.8
SATURATION_PER_STRENGTH = 0.8
HUE_PER_STRENGTH = 0.2


# Each probabilistic op's on/off switch in `config.aug` and its probability.
SWITCHED_PROBS = {"flip": "flip_prob", "color_jitter": "color_prob",
                  "grayscale": "grayscale_prob", "blur": "blur_prob"}


def op_prob(aug_cfg: Any, switch: str) -> float:
  """The probability of an op, 0 when its switch (`aug.<switch>`) is off.

  Every reader of a probability goes through here (host, fast and on-device
  paths alike), so an op switched off is off everywhere; the random draws are
  the same either way, so the other ops' randomness does not move.

  Args:
    aug_cfg: the `config.aug` ConfigDict.
    switch: a key of `SWITCHED_PROBS`.

  Returns:
    The configured probability, or 0.0.
  """
  on = aug_cfg.get(switch, True)  # configs written before the switches
  return float(aug_cfg[SWITCHED_PROBS[switch]]) if on else 0.0

@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the training code needs to know about a dataset.

  Attributes:
    num_examples: examples per split, for the configured train and eval splits.
    num_classes: number of classes.
    image_shape: shape of a stored image (None for a side that varies); for
      digits the native 8 x 8 x 3.
    labelled: whether the examples have class labels (unlabelled image
      folders have none: label 0 everywhere, num_classes 0).
    has_eval: whether there is an eval split (an image folder without one
      and without a held-out fraction has none: evaluation is skipped).
  """
  num_examples: Dict[str, int]
  num_classes: int
  image_shape: Tuple[Optional[int], Optional[int], int]
  labelled: bool = True
  has_eval: bool = True


def blur_kernel_size(side: int, kernel_frac: float) -> int:
  """Official blur kernel size: r = int(side * kernel_frac) // 2, size 2r + 1.

  Args:
    side: image side in pixels.
    kernel_frac: kernel side as a fraction of the image side.

  Returns:
    The odd kernel side (1 means no blur).
  """
  radius = int(side * kernel_frac) // 2
  return 2 * radius + 1


def class_balanced_subset(labels: np.ndarray, fraction: float,
                          seed: int) -> np.ndarray:
  """Indices of a class-balanced labelled subset (e.g. 1% or 10% labels).

  Each class c keeps max(1, round(fraction * count_c)) examples, chosen by a
  permutation from `seed`.

  Args:
    labels: int [N] labels of the split.
    fraction: fraction of each class to keep, in (0, 1].
    seed: selection seed; the same seed gives the same indices.

  Returns:
    Sorted int64 indices into `labels`.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction = {fraction!r} is invalid: allowed (0, 1].")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = max(1, round(fraction * len(members)))
    chosen.append(rng.permutation(members)[:k])
  return np.sort(np.concatenate(chosen)).astype(np.int64)
