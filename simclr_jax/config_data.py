"""Checks and adjustments of a config against the dataset it will read.

The split sizes, and whether the images have labels and an eval split, are
known only once the data source is opened; the training loop calls these
then, before any model is built or anything compiled: `adapt_to_data`
turns off what the data cannot support, `fit_sizes` (with
`data.fit_sizes`) lowers sizes a small dataset cannot fill, and
`validate_data` refuses the rest with a one-line `ConfigError`.
"""

from typing import Optional

import ml_collections

from simclr_jax.config import fail

# What needs labels, and what needs an eval split, in pretraining.
_LABEL_FIELDS = ("train.probe", "eval.knn", "eval.final_probe")
_EVAL_FIELDS = _LABEL_FIELDS + ("viz.enabled",)


def _get(config: ml_collections.ConfigDict, field: str):
  section, name = field.split(".")
  return config[section][name]


def adapt_to_data(config: ml_collections.ConfigDict, labelled: bool,
                  has_eval: bool) -> None:
  """Turns off, in place, what the data cannot support; one log line each.

  Unlabelled data (an image folder without class sub-folders) cannot train
  or score the online probe, kNN monitor or final probe; pretraining gets
  the held-out signals instead (`eval.signals='auto'`). Data without an
  eval split skips every evaluation. The other modes need both.

  Args:
    config: the full configuration, changed in place.
    labelled: whether the training examples have class labels.
    has_eval: whether there is an eval split.

  Raises:
    ConfigError: for a mode other than pretraining on such data.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  if config.mode != "pretrain" and not labelled:
    fail("mode", config.mode, "needs labelled data; the images in "
         f"data.data_dir={config.data.data_dir!r} have no class sub-folders "
         "(use mode 'pretrain', or <split>/<class>/<image> folders)")
  if config.mode != "pretrain" and not has_eval:
    fail("data.holdout_fraction", config.data.get("holdout_fraction", 0.0),
         f"mode {config.mode!r} needs an eval split: add the "
         f"{config.data.eval_split!r} folder or hold out a fraction > 0")
  if config.mode != "pretrain":
    return
  if not has_eval:
    on = [f for f in _EVAL_FIELDS if _get(config, f)]
    for field in on:
      config[field.split(".")[0]][field.split(".")[1]] = False
    config.eval.signals = "off"
    logging.info("No eval split: evaluation skipped%s", (
        f" ({', '.join(on)} set to False)" if on else ""))
    return
  if not labelled:
    on = [f for f in _LABEL_FIELDS if _get(config, f)]
    for field in on:
      config[field.split(".")[0]][field.split(".")[1]] = False
    if on:
      logging.info("Unlabelled data: %s set to False (they need labels)",
                   ", ".join(on))
    if config.eval.signals == "auto":
      config.eval.signals = "on"
      logging.info("Unlabelled data: the held-out signals (contrastive "
                   "top-1, alignment, uniformity) run at every evaluation")


def fit_sizes(config: ml_collections.ConfigDict, num_train: int,
              num_eval: Optional[int], num_devices: int) -> None:
  """With `data.fit_sizes`, lowers sizes a small dataset cannot fill.

  For a folder of a few dozen images: the batch, the kNN neighbours, the
  picture batches and the t-SNE perplexity are lowered, in place and with
  one log line, to what the split sizes allow (a batch stays a multiple of
  the device count). Without `data.fit_sizes` `validate_data` refuses them.

  Args:
    config: the full configuration, changed in place.
    num_train: examples of the train split.
    num_eval: examples of the eval split (None: no eval split).
    num_devices: devices the batches are split over.
  """
  if not config.data.get("fit_sizes", False):
    return
  changed = []

  def lower(section, name, value):
    if value < config[section][name]:
      changed.append(f"{section}.{name}={config[section][name]}->{value}")
      config[section][name] = type(config[section][name])(value)

  fit_train = max(num_devices, num_train // num_devices * num_devices)
  lower("train", "global_batch", fit_train)
  if uses_knn(config):
    lower("eval", "knn_k", max(1, num_train))
  if not config.viz.enabled:
    num_eval = None  # no pictures: nothing else to fit
  else:
    lower("viz", "heatmap_batch", fit_train)
    lower("viz", "preview_images", num_train)
  if num_eval:
    points = min(int(config.viz.tsne_points), num_eval)
    # sklearn's t-SNE needs perplexity < points; a third keeps it stable.
    lower("viz", "tsne_perplexity", max(0.5, (points - 1) / 3))
  if changed:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.info("data.fit_sizes: lowered to fit %d training images: %s",
                 num_train, ", ".join(changed))


def uses_signals(config: ml_collections.ConfigDict) -> bool:
  """Whether pretraining runs the held-out signals (`eval.signals`)."""
  return config.mode == "pretrain" and config.eval.get("signals") == "on"


def uses_knn(config: ml_collections.ConfigDict) -> bool:
  """Whether the mode runs the kNN classifier (monitor or protocol)."""
  if config.mode == "pretrain":
    return bool(config.eval.knn)
  return config.mode == "linear_eval" and "knn" in tuple(config.eval.protocols)


def validate_data(config: ml_collections.ConfigDict, num_train: int,
                  num_eval: Optional[int]) -> None:
  """Checks the fields whose limits depend on the dataset's split sizes.

  Called as soon as the sizes are known, before any model is built or
  anything compiled, so that a small dataset fails at once instead of at
  the first evaluation.

  Args:
    config: the full configuration.
    num_train: examples of `data.train_split` (all processes).
    num_eval: examples of `data.eval_split` (all processes); None when there
      is no eval split (evaluation skipped, see `adapt_to_data`).

  Raises:
    ConfigError: naming the field, its value and the limit.
  """
  split = config.data.eval_split
  if num_eval is not None and num_eval < 1:
    fail("data.eval_split", split, "the split holds no examples")
  if uses_signals(config) and num_eval is not None and num_eval < 2:
    fail("eval.signals", config.eval.signals, f"the eval split {split!r} "
         f"holds {num_eval} image; the held-out signals compare pairs of "
         "different images (hold out more, or set 'off')")
  labelled = num_train
  if config.mode in ("linear_eval", "finetune") or uses_knn(config):
    # The seeded class-balanced subset (about this size; exact per class).
    labelled = max(1, int(round(num_train * float(config.eval.label_fraction))))
  trained_on = labelled if config.mode in ("linear_eval",
                                           "finetune") else num_train
  batch = config.train.global_batch
  if batch > trained_on:
    fail("train.global_batch", batch, f"exceeds the {trained_on} training "
         "examples (the last partial batch is dropped)")
  if uses_knn(config) and config.eval.knn_k > labelled:
    fail("eval.knn_k", config.eval.knn_k, f"must be <= the {labelled} "
         "examples of the kNN memory (the labelled training examples)")
  if config.mode == "pretrain" and config.viz.enabled and num_eval:
    points = min(int(config.viz.tsne_points), num_eval)
    if not 0 < float(config.viz.tsne_perplexity) < points:
      fail("viz.tsne_perplexity", config.viz.tsne_perplexity,
           f"must be in (0, {points}), the points of the embedding map "
           f"(viz.tsne_points={config.viz.tsne_points}, {num_eval} examples "
           f"in {split!r})")
    for field in ("heatmap_batch", "preview_images"):
      if int(config.viz[field]) > num_train:
        fail(f"viz.{field}", config.viz[field], f"must be <= the {num_train} "
             "training examples")
