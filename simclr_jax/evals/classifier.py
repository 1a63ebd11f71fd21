"""Exact classifier evaluation: every example of a split counted once.

Eval batches are padded and carry a `mask`; the per-replica step sums correct
predictions and valid examples and psums them over all devices, so accuracy
is exact on any number of hosts and devices (no dropped remainder).
"""

from typing import Any, Callable, Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel
from simclr_jax.evals import base as evals_base

AXIS = parallel.AXIS


def classifier_counts(logits: jax.Array, labels: jax.Array,
                      mask: jax.Array, top_k: int = 5) -> Dict[str, jax.Array]:
  """Correct top-1 / top-k predictions and valid examples, over masked rows.

  Args:
    logits: [b, C] class scores.
    labels: [b] integer labels.
    mask: [b] bool, False on padding rows.
    top_k: k of the top-k accuracy (clipped to the number of classes).

  Returns:
    {'top1': count, 'topk': count, 'count': valid rows} as float32 scalars.
  """
  k = min(top_k, logits.shape[-1])
  mask = mask.astype(jnp.float32)
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  _, topk_idx = jax.lax.top_k(logits, k)
  topk = jnp.any(topk_idx == labels[:, None], axis=-1).astype(jnp.float32)
  return {"top1": jnp.sum(top1 * mask), "topk": jnp.sum(topk * mask),
          "count": jnp.sum(mask)}


def make_classifier_eval_step(logits_fn: Callable[[Any, jax.Array], jax.Array],
                              mesh, top_k: int = 5) -> Callable:
  """Returns jit(shard_map(...)) mapping (variables, batch) to global counts.

  Args:
    logits_fn: (variables, images) -> logits for one replica.
    mesh: the device mesh.
    top_k: k of the top-k accuracy.
  """
  def replica(variables, batch):
    logits = logits_fn(variables, batch["images"])
    counts = classifier_counts(logits, batch["labels"], batch["mask"], top_k)
    return jax.lax.psum(counts, AXIS)

  mapped = parallel.per_replica(replica, mesh, in_specs=(P(), P(AXIS)),
                                out_specs=P())
  return jax.jit(mapped)


def run_classifier_eval(eval_step: Callable, variables: Any,
                        batches: Iterable[Dict[str, np.ndarray]],
                        mesh) -> Dict[str, float]:
  """Runs `eval_step` over padded host batches and returns exact accuracies.

  Args:
    eval_step: from `make_classifier_eval_step`.
    variables: replicated model variables.
    batches: this host's padded batches {'images', 'labels', 'mask'}.
    mesh: the device mesh.

  Returns:
    {'top1', 'top5', 'num_examples'}.
  """
  totals = None
  for batch in batches:
    counts = eval_step(variables, parallel.host_to_global(mesh, batch))
    totals = counts if totals is None else jax.tree.map(jnp.add, totals,
                                                        counts)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  totals = parallel.to_host(totals)
  count = float(totals["count"])
  return {"top1": float(totals["top1"]) / count,
          "top5": float(totals["topk"]) / count,
          "num_examples": int(round(count))}


def head_logits_fn(model) -> Callable[[Any, jax.Array], jax.Array]:
  """(variables, images) -> supervised-head logits in inference mode."""
  def fn(variables, images):
    return model.apply(variables, images, train=False)["logits"]
  return fn


probe_logits_fn = head_logits_fn  # the online probe is the supervised head


class ClassifierEval(evals_base.Evaluator):
  """Exact top-1/top-5 of a model's supervised head on the eval split.

  Reads `config.data` (the eval split), `config.aug` (evaluation crop) and
  `config.eval.batch_size`.
  """

  sections = ("eval", "data", "aug")  # the config it is given (registry.sliced)

  def __init__(self, name: str, config: ml_collections.ConfigDict, model,
               mesh, periodic: bool = True, variables: Optional[Any] = None):
    """Compiles nothing yet; the step is built on first use.

    Args:
      name: results key ('probe', 'linear', 'finetune', 'student', ...).
      config: the sections `sections` names (eval, data, aug).
      model: a model whose `apply(..., train=False)['logits']` classifies.
      mesh: the device mesh.
      periodic: also run at the evaluation cadence.
      variables: fixed variables to evaluate (a frozen teacher) instead of
        the ones the loop passes.
    """
    self.name, self.periodic = name, periodic
    self._config, self._mesh, self._variables = config, mesh, variables
    self._step = make_classifier_eval_step(head_logits_fn(model), mesh)

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Dict[str, Any]:
    """Scores the eval split; see `evals.base.Evaluator`."""
    del step, writer  # the result does not depend on them
    # pylint: disable=g-import-not-at-top
    from simclr_jax import data as data_lib  # tf.data only where it runs
    cfg = self._config
    batches = data_lib.make_eval_iterator(cfg.data, cfg.aug,
                                          cfg.data.eval_split,
                                          cfg.eval.batch_size)
    if self._variables is not None:
      variables = self._variables
    return run_classifier_eval(self._step, variables, batches, self._mesh)
