"""Validation of a ConfigDict and the values derived from it.

Everything here is pure: no files are read and no devices are touched, so a
bad config fails in milliseconds, before any data is loaded or compiled.
"""

import dataclasses
import math
from typing import Optional

import ml_collections

from simclr_jax import losses
from simclr_jax import optim

SOURCES = ("digits", "tfds", "folder", "synthetic")
DEPTHS = (18, 34, 50, 101, 152, 200)
STEMS = ("cifar", "imagenet", "auto")
DTYPES = ("float32", "bfloat16")
# model.proj_head: the official `proj_head_mode` values.
PROJ_HEADS = ("nonlinear", "linear", "none")
# aug on/off switches, one per op (SimCLR Figure 5).
AUG_SWITCHES = ("crop", "flip", "color_jitter", "grayscale", "blur")
# Fields replaced by eval.evaluators, and the names to use there instead.
REPLACED_FIELDS = {
    "eval.knn": "'knn'", "eval.final_probe": "'fast_probe'",
    "eval.signals": "'signals'", "viz.enabled": "'pictures'",
    "eval.protocols": "'classifier' (was 'linear'), 'fast_probe', 'knn'",
    "distill.eval_teacher": "'teacher'",
}
# Total downsampling of the encoder; the last stage must keep >= 1 pixel.
_STEM_DOWNSAMPLE = {"cifar": 8, "imagenet": 32}


class ConfigError(ValueError):
  """A configuration value that cannot run; the message is one line.

  Entry points print it without a traceback and exit with status 2.
  """


def fail(field: str, value, allowed: str) -> None:
  """Raises ConfigError as `config.<field>=<value> is invalid: <allowed>`.

  The one format of every configuration error, wherever it is detected; a
  command-line flag (`field` starting with '--') is named as it is typed.
  """
  name = field if field.startswith("--") else f"config.{field}"
  raise ConfigError(f"{name}={value!r} is invalid: {allowed}")


_fail = fail


def _check_in(config, field: str, allowed) -> None:
  value = config
  for part in field.split("."):
    value = value[part]
  if value not in allowed:
    _fail(field, value, f"allowed values are {tuple(allowed)}")


def resolve_stem(config: ml_collections.ConfigDict) -> str:
  """Returns the stem to build: the configured one, or by image size for 'auto'."""
  if config.model.stem != "auto":
    return config.model.stem
  small = config.data.image_size <= config.model.auto_stem_max_size
  return "cifar" if small else "imagenet"


def head_depth(proj_head: str, head_layers: int) -> int:
  """Layers of the projection head actually built: z is the last one's output.

  'nonlinear' builds `head_layers`; 'linear' one bias-free Dense + BatchNorm
  (the official 'linear' mode); 'none' no layer (z = h).
  """
  return {"nonlinear": head_layers, "linear": 1, "none": 0}[proj_head]


def validate(config: ml_collections.ConfigDict,
             num_devices: Optional[int] = None,
             num_processes: int = 1) -> None:
  """The checks every mode shares; raises ConfigError naming the field, value
  and what is allowed. The mode's own checks are its `validate`
  (`engine.resolve.validate` runs both).

  Args:
    config: the full configuration.
    num_devices: global device count; when given, batch divisibility is checked.
    num_processes: number of processes (hosts) sharing the run.
  """
  _check_replaced_fields(config)
  _check_finite_numbers(config)
  _check_label_fractions(config)
  _check_in(config, "data.source", SOURCES)
  if config.data.source == "tfds" and not config.data.name:
    _fail("data.name", config.data.name, "a TFDS builder name is required "
          "when data.source='tfds'")
  if config.data.source == "folder" and not config.data.data_dir:
    _fail("data.data_dir", config.data.data_dir, "the image-folder root is "
          "required when data.source='folder'")
  if config.data.source == "synthetic":
    _validate_synthetic(config)
  if config.data.get("fast_jpeg_dct", False) and not (
      config.data.get("fast_jpeg", False) or config.aug.get("on_device", False)
      or config.aug.get("on_device_on_accelerators", False)):
    _fail("data.fast_jpeg_dct", True, "it is a mode of the fast JPEG path: "
          "set data.fast_jpeg=True (or aug.on_device=True) with it")
  _check_in(config, "model.depth", DEPTHS)
  _check_in(config, "model.stem", STEMS)
  _check_in(config, "model.dtype", DTYPES)
  if not isinstance(config.model.width, int) or config.model.width < 1:
    _fail("model.width", config.model.width, "a positive integer is required")
  _check_in(config, "model.proj_head", PROJ_HEADS)
  if config.model.head_layers < 1:
    _fail("model.head_layers", config.model.head_layers, "must be >= 1")
  depth = head_depth(config.model.proj_head, config.model.head_layers)
  if not 0 <= config.model.sup_head_from <= depth:
    _fail("model.sup_head_from", config.model.sup_head_from,
          f"must be in [0, {depth}], the layers of the "
          f"{config.model.proj_head!r} projection head")
  for field in AUG_SWITCHES:
    if not isinstance(config.aug[field], bool):
      _fail(f"aug.{field}", config.aug[field], "True or False")
  if not isinstance(config.optim.decay_sup_head, bool):
    _fail("optim.decay_sup_head", config.optim.decay_sup_head, "True or False")
  _validate_loss(config.loss)
  _check_in(config, "optim.name", optim.OPTIMIZERS)
  _check_in(config, "optim.lr_scaling", optim.LR_SCALINGS)
  if config.optim.base_lr <= 0:
    _fail("optim.base_lr", config.optim.base_lr, "must be > 0")
  if not 2 <= config.aug.num_views <= 16:
    _fail("aug.num_views", config.aug.num_views, "must be in [2, 16]")
  _validate_durations(config)
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                "max_steps_in_flight", "first_eta_steps"):
    if config.train[field] < 1:
      _fail(f"train.{field}", config.train[field], "must be >= 1")
  for field in ("first_eta_seconds", "cpu_eta_warning_hours"):
    if not config.train[field] > 0:
      _fail(f"train.{field}", config.train[field], "must be > 0")
  _validate_eval(config)
  stem = resolve_stem(config)
  min_size = _STEM_DOWNSAMPLE[stem]
  if config.data.image_size < min_size:
    _fail("data.image_size", config.data.image_size,
          f"the {stem} stem downsamples by {min_size}: use at least {min_size} px")
  batch = config.train.global_batch
  if batch < 1:
    _fail("train.global_batch", batch, "must be >= 1")
  if batch % num_processes:
    _fail("train.global_batch", batch,
          f"must be divisible by the number of processes ({num_processes})")
  if num_devices is not None:
    if batch % num_devices:
      _fail("train.global_batch", batch,
            f"must be divisible by the number of devices ({num_devices})")
    if config.eval.batch_size % num_devices:
      _fail("eval.batch_size", config.eval.batch_size,
            f"must be divisible by the number of devices ({num_devices})")


def _check_replaced_fields(config: ml_collections.ConfigDict) -> None:
  """A field that `eval.evaluators` replaced: one line naming it."""
  for field, names in REPLACED_FIELDS.items():
    section, name = field.split(".")
    if section in config and name in config[section]:
      _fail(field, config[section][name], "replaced by eval.evaluators: name "
            f"{names} there")


def _validate_durations(config: ml_collections.ConfigDict) -> None:
  """Step and epoch counts: 0 keeps its documented meaning, < 0 has none."""
  train = config.train
  if not _is_count(train.steps):
    _fail("train.steps", train.steps, "an integer >= 0 is required (0 = "
          "train for train.epochs)")
  if not _is_number(train.epochs) or train.epochs < 0:
    _fail("train.epochs", train.epochs, "a number >= 0 is required")
  if train.steps == 0 and train.epochs == 0:
    _fail("train.epochs", train.epochs, "must be > 0 unless train.steps > 0")
  if not _is_count(train.eval_every_steps):
    _fail("train.eval_every_steps", train.eval_every_steps, "an integer >= 0 "
          "is required (0 = evaluate only at the end)")
  warmup = config.optim.warmup_epochs
  if not _is_number(warmup) or warmup < 0:
    _fail("optim.warmup_epochs", warmup, "a number >= 0 is required (0 = no "
          "warm-up)")


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_loss(loss: ml_collections.ConfigDict) -> None:
  """The loss section (see `losses.for_config`)."""
  if loss.name not in losses.LOSSES:
    _fail("loss.name", loss.name, f"allowed values are {losses.LOSSES}")
  if loss.temperature <= 0:
    _fail("loss.temperature", loss.temperature, "must be > 0")
  if loss.supcon_variant not in losses.SUPCON_VARIANTS:
    _fail("loss.supcon_variant", loss.supcon_variant,
          f"allowed values are {losses.SUPCON_VARIANTS}")
  if not isinstance(loss.official_scale, bool):
    _fail("loss.official_scale", loss.official_scale, "True or False")
  base = loss.base_temperature
  if isinstance(base, bool) or not isinstance(base, (int, float)) or base < 0:
    _fail("loss.base_temperature", base,
          "a number >= 0 is required (0 = no tau / base factor)")
  if base and loss.name != "supcon":
    _fail("loss.base_temperature", base,
          f"only loss.name='supcon' uses it, not {loss.name!r}: set it to 0")


def _check_finite_numbers(config: ml_collections.ConfigDict,
                          prefix: str = "") -> None:
  """Every float field, in any section, must be finite (no NaN, no inf)."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite_numbers(value, f"{prefix}{key}.")
    elif isinstance(value, float) and not math.isfinite(value):
      fail(f"{prefix}{key}", value, "a finite number is required")
    elif isinstance(value, (tuple, list)) and any(
        isinstance(v, float) and not math.isfinite(v) for v in value):
      fail(f"{prefix}{key}", tuple(value), "finite numbers are required")


def _check_label_fractions(config: ml_collections.ConfigDict,
                           prefix: str = "") -> None:
  """Every field named *label_fraction, in any section, must be in (0, 1]."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_label_fractions(value, f"{prefix}{key}.")
    elif key.endswith("label_fraction") and not (
        isinstance(value, (int, float)) and not isinstance(value, bool) and
        0 < value <= 1):
      _fail(f"{prefix}{key}", value, "a fraction of the labels in (0, 1] "
            "is required")


def _validate_eval(config: ml_collections.ConfigDict) -> None:
  """Checks the evaluation fields."""
  ev = config.eval
  if not isinstance(ev.batch_size, int) or ev.batch_size < 1:
    _fail("eval.batch_size", ev.batch_size, "a positive integer is required")
  if not 0 < ev.label_fraction <= 1:
    _fail("eval.label_fraction", ev.label_fraction, "must be in (0, 1]")
  if ev.knn_k < 1:
    _fail("eval.knn_k", ev.knn_k, "must be >= 1")
  if int(ev.get("signal_max_images", 2)) < 2:
    _fail("eval.signal_max_images", ev.signal_max_images, "must be >= 2 "
          "(pairs of different images)")
  if ev.knn_temperature <= 0:
    _fail("eval.knn_temperature", ev.knn_temperature, "must be > 0")
  if not 0 < ev.probe_val_fraction < 1:
    _fail("eval.probe_val_fraction", ev.probe_val_fraction, "must be in (0, 1)")


def _validate_synthetic(config: ml_collections.ConfigDict) -> None:
  """Checks the `data.synthetic_*` fields that the synthetic source reads."""
  data = config.data
  for field in ("synthetic_train_examples", "synthetic_eval_examples",
                "synthetic_grid"):
    if not isinstance(data[field], int) or data[field] < 1:
      _fail(f"data.{field}", data[field], "a positive integer is required")
  if not isinstance(data.synthetic_num_classes, int) or (
      data.synthetic_num_classes < 2):
    _fail("data.synthetic_num_classes", data.synthetic_num_classes,
          "an integer >= 2 is required")
  if data.synthetic_grid > data.image_size:
    _fail("data.synthetic_grid", data.synthetic_grid,
          f"must be <= data.image_size={data.image_size}")
  if data.synthetic_noise < 0:
    _fail("data.synthetic_noise", data.synthetic_noise, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Step counts and learning rate derived from a config and a dataset size."""
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  peak_lr: float


def derive_schedule(config: ml_collections.ConfigDict,
                    num_train_examples: int) -> Schedule:
  """Converts epochs (or steps) to step counts and scales the learning rate.

  Args:
    config: the full configuration.
    num_train_examples: examples in the training split (all processes).

  Returns:
    A `Schedule`.
  """
  batch = config.train.global_batch
  if num_train_examples < batch:
    _fail("train.global_batch", batch, f"exceeds the {num_train_examples} "
          "training examples (the last partial batch is dropped)")
  steps_per_epoch = num_train_examples // batch
  if config.train.steps > 0:
    total = int(config.train.steps)
  else:
    total = int(math.ceil(config.train.epochs * steps_per_epoch))
  warmup = int(round(config.optim.warmup_epochs * steps_per_epoch))
  peak = optim.scaled_learning_rate(config.optim.base_lr, batch,
                                    config.optim.lr_scaling)
  return Schedule(steps_per_epoch, total, warmup, peak)


def is_time(step: int, every: int, total_steps: int) -> bool:
  """True when `step` (1-based, just finished) is a multiple of `every` or the last.

  The one place that decides when to log, evaluate and checkpoint, so the
  intervals cannot drift apart.
  """
  return step == total_steps or (every > 0 and step % every == 0)
