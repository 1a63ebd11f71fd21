"""Evaluation during pretraining: online probe, kNN monitor, final fast probe.

Called by the pretraining loop every `train.eval_every_steps` and at the last
step. The online linear probe (trained inside the step on stop_gradient(h))
is scored exactly on the eval split; the kNN monitor classifies the eval
split against the train split's features; at the end, optionally, the fast
probe (logistic regression on frozen features) gives the linear-evaluation
number without a separate run.
"""

from typing import Any, Dict, Tuple

import ml_collections

from simclr_jax import data as data_lib
from simclr_jax import evaluate
from simclr_jax import fast_probe
from simclr_jax import features as features_lib
from simclr_jax import knn


def online_probe(config: ml_collections.ConfigDict, model, variables: Any,
                 mesh) -> Dict[str, Any]:
  """Exact top-1/top-5 of the online linear probe on the eval split.

  Args:
    config: the full configuration.
    model: the pretraining model (with its supervised head).
    variables: replicated model variables.
    mesh: the device mesh.

  Returns:
    {'top1', 'top5', 'num_examples'}.
  """
  step = evaluate.make_classifier_eval_step(evaluate.probe_logits_fn(model),
                                            mesh)
  batches = data_lib.make_eval_iterator(
      config.data, config.aug, config.data.eval_split, config.eval.batch_size)
  return evaluate.run_classifier_eval(step, variables, batches, mesh)


def run(config: ml_collections.ConfigDict, model, variables: Any,
        num_classes: int, mesh, final: bool
        ) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """The evaluations due at an eval period (or at the end when `final`).

  The online probe is scored here only between periods: at the end the
  pretraining loop scores it itself.

  Args:
    config: the full configuration (train.probe, eval.knn, eval.final_probe).
    model: the pretraining model.
    variables: replicated model variables.
    num_classes: classes of the dataset.
    mesh: the device mesh.
    final: this is the last step.

  Returns:
    (results, scalars): per-evaluation result dicts ('probe', 'knn',
    'linear_probe') and the TensorBoard scalars 'eval/<name>_top1|top5'.
  """
  results = {}
  if config.train.probe and not final:
    results["probe"] = online_probe(config, model, variables, mesh)
  want_probe = final and config.eval.final_probe
  if config.eval.knn or want_probe:
    arrays = features_lib.split_arrays(
        config, features_lib.encoder_feature_fn(model), variables, mesh)
    if config.eval.knn:
      results["knn"] = knn.knn_eval(config, arrays, num_classes, mesh)
    if want_probe:
      results["linear_probe"] = fast_probe.fast_probe(config, arrays,
                                                      num_classes)
  scalars = {}
  for name, res in results.items():
    scalars[f"eval/{name}_top1"] = res["top1"]
    scalars[f"eval/{name}_top5"] = res["top5"]
  return results, scalars
