"""The evaluators by name: one vocabulary for every mode.

`config.eval.evaluators` names the evaluators a run uses, from `NAMES`, in
every mode; `("auto",)` is the mode's own default set (resolved, and
logged, before the mode builds anything). A mode says which names it
supports and gives the evaluators what they score through a `Context`;
`build` makes them, in the order of `NAMES`.

The fields this field replaced are refused with a one-line error naming it
(`config.REPLACED_FIELDS`).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import ml_collections

from simclr_jax.config import fail
from simclr_jax.evals import base as evals_base

AUTO = "auto"  # the mode's default set
# Every evaluator name, in the order they run and report.
NAMES = ("classifier", "teacher", "knn", "fast_probe", "signals", "pictures")
# What each name is, for messages and docs.
MEANINGS = {
    "classifier": "exact top-1/top-5 of the mode's trained classifier head "
                  "(the online probe, the linear head, the fine-tuned "
                  "model, the student)",
    "teacher": "the distillation teacher's top-1/top-5 (the reference)",
    "knn": "kNN classifier on the encoder's features (eval.knn_*)",
    "fast_probe": "L-BFGS logistic regression on frozen features "
                  "(eval.probe_*), at the end",
    "signals": "held-out contrastive top-1, alignment, uniformity (no "
               "labels needed)",
    "pictures": "augmentation grid, embedding map, similarity heatmap (viz.*)",
}
def names(config: ml_collections.ConfigDict) -> tuple:
  """The evaluator names of a resolved config."""
  return tuple(config.eval.evaluators)


def check_names(config: ml_collections.ConfigDict, supported: Sequence[str],
                mode: str) -> None:
  """`eval.evaluators` must name evaluators `mode` supports, or be auto."""
  given = names(config)
  if given == (AUTO,):
    return
  unknown = [n for n in given if n not in NAMES]
  if unknown:
    fail("eval.evaluators", given, f"unknown {unknown}; the evaluators are "
         f"{NAMES}")
  unsupported = [n for n in given if n not in supported]
  if unsupported:
    fail("eval.evaluators", given, f"mode {mode!r} runs only "
         f"{tuple(supported)}")


def resolve_auto(config: ml_collections.ConfigDict,
                 default: Sequence[str]) -> Dict[str, Any]:
  """{'eval.evaluators': the mode's default} when it says auto."""
  if names(config) == (AUTO,):
    return {"eval.evaluators": tuple(default)}
  return {}


def without(config: ml_collections.ConfigDict,
            dropped: Sequence[str]) -> Dict[str, Any]:
  """{'eval.evaluators': ...} without `dropped`, when any is named."""
  kept = tuple(n for n in names(config) if n not in dropped)
  return {"eval.evaluators": kept} if kept != names(config) else {}


@dataclasses.dataclass
class Context:
  """What the evaluators of one job score, given by its mode.

  Attributes:
    config: the resolved config.
    mesh: the device mesh.
    workdir: the run's directory (pictures).
    num_classes: classes of the data (0: unlabelled).
    model: the model whose head 'classifier' scores and whose encoder the
      signals and pictures use.
    classifier_key: the results key of 'classifier' ('probe', 'linear', ...).
    feature_fn: (variables, images) -> features for kNN and the fast probe.
    frozen_encoder: the features do not change during the run: the feature
      evaluators then run at the end only.
    teacher: (model, replicated variables) of the distillation teacher.
  """
  config: ml_collections.ConfigDict
  mesh: Any
  workdir: str = ""
  num_classes: int = 0
  model: Any = None
  classifier_key: str = "classifier"
  feature_fn: Optional[Callable] = None
  frozen_encoder: bool = False
  teacher: Optional[tuple] = None
  _features: Any = dataclasses.field(default=None, init=False, repr=False)

  def sections(self, owner: Any) -> ml_collections.FrozenConfigDict:
    """The part of the config `owner` declares it reads (`owner.sections`).

    An evaluator is given only these sections, so reading any other field
    fails at once instead of coupling it to the whole config.
    """
    return sliced(self.config, owner.sections)

  def features(self):
    """The features kNN and the fast probe share (computed once a step)."""
    if self._features is None:
      from simclr_jax.evals import features as features_lib  # pylint: disable=g-import-not-at-top
      cls = features_lib.SplitFeatures
      self._features = cls(self.sections(cls), self.feature_fn, self.mesh)
    return self._features


def sliced(config: ml_collections.ConfigDict, sections: Sequence[str]
           ) -> ml_collections.FrozenConfigDict:
  """A frozen config holding only the top-level fields `sections` names."""
  missing = [s for s in sections if s not in config]
  if missing:
    raise KeyError(f"the config has no section {missing}; it has "
                   f"{sorted(config.keys())}")
  return ml_collections.FrozenConfigDict({s: config[s] for s in sections})


# pylint: disable=g-import-not-at-top
def _classifier(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import classifier
  return classifier.ClassifierEval(
      ctx.classifier_key, ctx.sections(classifier.ClassifierEval), ctx.model,
      ctx.mesh)


def _teacher(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import classifier
  model, variables = ctx.teacher
  return classifier.ClassifierEval(
      "teacher", ctx.sections(classifier.ClassifierEval), model, ctx.mesh,
      periodic=False, variables=variables)


def _knn(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import knn
  return knn.KnnEval(ctx.sections(knn.KnnEval), ctx.features(),
                     ctx.num_classes, ctx.mesh,
                     periodic=not ctx.frozen_encoder)


def _fast_probe(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import fast_probe
  return fast_probe.FastProbeEval(ctx.sections(fast_probe.FastProbeEval),
                                  ctx.features(), ctx.num_classes)


def _signals(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import signals
  return signals.SignalsEval(ctx.sections(signals.SignalsEval), ctx.model,
                             ctx.mesh)


def _pictures(ctx: Context) -> evals_base.Evaluator:
  from simclr_jax.evals import pictures
  return pictures.PicturesEval(ctx.sections(pictures.PicturesEval),
                               ctx.model, ctx.mesh, ctx.workdir,
                               labelled=ctx.num_classes > 0)
# pylint: enable=g-import-not-at-top


_FACTORIES: Dict[str, Callable[[Context], evals_base.Evaluator]] = {
    "classifier": _classifier, "teacher": _teacher, "knn": _knn,
    "fast_probe": _fast_probe, "signals": _signals, "pictures": _pictures}


def build(ctx: Context) -> List[evals_base.Evaluator]:
  """The evaluators `ctx.config.eval.evaluators` names, in `NAMES` order."""
  named = set(names(ctx.config))
  return [_FACTORIES[n](ctx) for n in NAMES if n in named]
