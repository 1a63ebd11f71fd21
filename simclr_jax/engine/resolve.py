"""Resolve once, then freeze: the config that will actually run.

Before any mode builds anything, `resolve` turns the user's config, the facts
of the data (split sizes, labels, eval split) and the backend into the final
config: the mode's rules (its input-path choice, what unlabelled or small
data cannot support, its defaults) each return the fields they change, every
change is logged as `resolved: field old -> new`, validation runs once on the
result, and the result is frozen, so nothing can change it afterwards.

The helpers below (`lower`, `fit_batch`, `check_batch`, ...) are the pieces
the modes' rules are made of; none of them knows a mode by name.
"""

import dataclasses
from typing import Any, Callable, Dict, Iterable, Optional

import ml_collections
from absl import logging

from simclr_jax import config as config_lib
from simclr_jax.config import fail
from simclr_jax.evals import registry as evals_registry

Changes = Dict[str, Any]  # dotted field -> its new value
Rule = Callable[[ml_collections.ConfigDict, "DataFacts"], Changes]


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What the data and the machine say, read once before resolving.

  Attributes:
    num_train: examples of `data.train_split` (all processes).
    num_eval: examples of `data.eval_split`; None when there is none.
    labelled: whether the training examples have class labels.
    num_devices: devices the batches are split over.
    backend: `jax.default_backend()` ('cpu', 'gpu', 'tpu', ...).
    num_processes: processes (hosts) sharing the run.
  """
  num_train: int
  num_eval: Optional[int]
  labelled: bool
  num_devices: int = 1
  backend: str = "cpu"
  num_processes: int = 1

  @property
  def has_eval(self) -> bool:
    return self.num_eval is not None


def read_facts(config: ml_collections.ConfigDict, num_devices: int,
               backend: str, num_processes: int = 1) -> DataFacts:
  """Opens the data source (no image is decoded) and returns its facts."""
  from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  info = data_lib.dataset_info(config.data)
  num_eval = (info.num_examples[config.data.eval_split] if info.has_eval
              else None)
  return DataFacts(num_train=info.num_examples[config.data.train_split],
                   num_eval=num_eval, labelled=info.labelled,
                   num_devices=num_devices, backend=backend,
                   num_processes=num_processes)


def resolve(mode: Any, config: ml_collections.ConfigDict, facts: DataFacts
            ) -> ml_collections.FrozenConfigDict:
  """The final, validated and frozen config of `mode` on these facts.

  Args:
    mode: the mode (`engine.loop.Mode`): its data needs, rules and checks.
    config: the user's config; not changed.
    facts: the facts of the data and the machine (`read_facts`).

  Returns:
    The resolved config, frozen.

  Raises:
    ConfigError: naming the field, its value and what is allowed.
  """
  _check_data_needs(mode, config, facts)
  resolved = config.copy_and_resolve_references()
  # The mode's defaults first, then its rules.
  apply_changes(resolved, evals_registry.resolve_auto(
      resolved, mode.default_evaluators))
  for rule in mode.rules():
    apply_changes(resolved, rule(resolved, facts))
  validate(mode, resolved, facts.num_devices, facts.num_processes)
  _check_eval_split(resolved, facts)
  mode.check_data(resolved, facts)
  return ml_collections.FrozenConfigDict(resolved)


def validate(mode: Any, config: ml_collections.ConfigDict,
             num_devices: Optional[int] = None,
             num_processes: int = 1) -> None:
  """The shared field checks, the model's, then the mode's own."""
  evals_registry.check_names(config, mode.evaluators, mode.name)
  config_lib.validate(config, num_devices, num_processes)
  # The models import `config`, so `config.validate` cannot call them.
  from simclr_jax.models import simclr as simclr_model  # pylint: disable=g-import-not-at-top
  simclr_model.validate_model_config(
      dict(config.model.items(), stem=config_lib.resolve_stem(config)))
  mode.validate(config)


def apply_changes(config: ml_collections.ConfigDict, changes: Changes) -> None:
  """Sets each changed field of the (not yet frozen) `config`, one log line
  each: the one place a config is assigned to once the user has made it."""
  for field, value in changes.items():
    *sections, name = field.split(".")
    parent = config
    for section in sections:
      parent = parent[section]
    old = parent[name]
    if old == value:
      continue
    logging.info("resolved: %s %r -> %r", field, old, value)
    parent[name] = value


def get(config: ml_collections.ConfigDict, field: str) -> Any:
  """The value of a dotted field."""
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def turn_off(config: ml_collections.ConfigDict,
             fields: Iterable[str]) -> Changes:
  """{field: False} for those of `fields` that are on."""
  return {f: False for f in fields if get(config, f)}


def lower(config: ml_collections.ConfigDict, field: str, value) -> Changes:
  """{field: value} when `value` is below the field's value (same type)."""
  old = get(config, field)
  return {field: type(old)(value)} if value < old else {}


def fits(config: ml_collections.ConfigDict) -> bool:
  """Whether `data.fit_sizes` lets the rules lower sizes to fit the data."""
  return bool(config.data.get("fit_sizes", False))


def fit_batch(config: ml_collections.ConfigDict, facts: DataFacts) -> Changes:
  """With `data.fit_sizes`, the batch lowered to the training examples (a
  multiple of the device count)."""
  if not fits(config):
    return {}
  return lower(config, "train.global_batch", fitted_train(facts))


def fitted_train(facts: DataFacts) -> int:
  """The training examples rounded down to the device count (at least one
  example per device)."""
  n = facts.num_devices
  return max(n, facts.num_train // n * n)


def labelled_examples(config: ml_collections.ConfigDict,
                      facts: DataFacts) -> int:
  """About the size of the seeded class-balanced subset of
  `eval.label_fraction` (exact per class)."""
  return max(1, int(round(facts.num_train * float(config.eval.label_fraction))))


def check_batch(config: ml_collections.ConfigDict, trained_on: int) -> None:
  """The global batch must not exceed the examples it is drawn from."""
  batch = config.train.global_batch
  if batch > trained_on:
    fail("train.global_batch", batch, f"exceeds the {trained_on} training "
         "examples (the last partial batch is dropped)")


def check_knn(config: ml_collections.ConfigDict, labelled: int) -> None:
  """The kNN classifier's k must not exceed its memory."""
  if config.eval.knn_k > labelled:
    fail("eval.knn_k", config.eval.knn_k, f"must be <= the {labelled} "
         "examples of the kNN memory (the labelled training examples)")


def _check_data_needs(mode: Any, config: ml_collections.ConfigDict,
                      facts: DataFacts) -> None:
  """The labels and eval split the mode declares it needs."""
  if mode.needs_labels and not facts.labelled:
    fail("mode", mode.name, "needs labelled data; the images in "
         f"data.data_dir={config.data.data_dir!r} have no class sub-folders "
         "(use a mode without labels, or <split>/<class>/<image> folders)")
  if mode.needs_eval_split and not facts.has_eval:
    fail("data.holdout_fraction", config.data.get("holdout_fraction", 0.0),
         f"mode {mode.name!r} needs an eval split: add the "
         f"{config.data.eval_split!r} folder or hold out a fraction > 0")


def _check_eval_split(config: ml_collections.ConfigDict,
                      facts: DataFacts) -> None:
  if facts.num_eval is not None and facts.num_eval < 1:
    fail("data.eval_split", config.data.eval_split,
         "the split holds no examples")

