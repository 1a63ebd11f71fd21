"""Weighted kNN classifier on frozen features (the monitor of solo-learn/InstDisc).

Each query's k nearest training examples by cosine similarity vote for their
class with weight exp(similarity / temperature). The memory bank (training
features) is split over the devices: every device ranks the queries against
its own rows, the per-device top-k lists are all-gathered and merged, so the
result equals a brute-force search over the whole bank while no device holds
more than its share of it.
"""

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel
from simclr_jax.evals import base as evals_base
from simclr_jax.evals import features as features_lib

AXIS = parallel.AXIS


def _normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _replica_scores(bank, bank_labels, bank_valid, queries, *, k: int,
                    temperature: float, num_classes: int) -> jax.Array:
  """Class scores [q, C] of replicated queries against this device's bank rows."""
  sims = _normalize(queries) @ _normalize(bank).T  # [q, n_local]
  sims = jnp.where(bank_valid[None, :], sims, -jnp.inf)
  local_k = min(k, bank.shape[0])
  top_sims, top_idx = jax.lax.top_k(sims, local_k)
  top_labels = bank_labels[top_idx]
  # Merge the devices' candidate lists into the global top-k.
  all_sims = jax.lax.all_gather(top_sims, AXIS, axis=1, tiled=True)
  all_labels = jax.lax.all_gather(top_labels, AXIS, axis=1, tiled=True)
  best_sims, pos = jax.lax.top_k(all_sims, min(k, all_sims.shape[1]))
  best_labels = jnp.take_along_axis(all_labels, pos, axis=1)
  # Padding rows have similarity -inf and so weight exactly 0.
  weights = jnp.exp(best_sims / temperature)
  votes = jax.nn.one_hot(best_labels, num_classes, dtype=jnp.float32)
  return jnp.einsum("qk,qkc->qc", weights, votes)


def _shard_bank(mesh, bank: np.ndarray, labels: np.ndarray
                ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Pads the (host, identical everywhere) bank to the device count and splits it."""
  n, devices = len(bank), mesh.devices.size
  padded = -(-max(n, 1) // devices) * devices
  bank = np.concatenate([bank, np.zeros((padded - n,) + bank.shape[1:],
                                        bank.dtype)])
  labels = np.concatenate([labels, np.zeros(padded - n, labels.dtype)])
  valid = np.arange(padded) < n
  sharding = NamedSharding(mesh, P(AXIS))

  def put(x):
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return put(bank), put(labels), put(valid)


def knn_scores(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray,
               k: int, temperature: float, num_classes: int, mesh,
               chunk: int = 256) -> np.ndarray:
  """Weighted-kNN class scores of every query.

  Args:
    bank: float [N, d] training features (the same on every process).
    bank_labels: int [N] their labels.
    queries: float [Q, d] features to classify (the same on every process).
    k: neighbours per query (clipped to N).
    temperature: similarity temperature of the vote weights.
    num_classes: number of classes C.
    mesh: the device mesh the bank is split over.
    chunk: queries scored at once.

  Returns:
    float32 [Q, C] scores: sum over the k neighbours of exp(sim / T) per class.
  """
  if k < 1 or temperature <= 0:
    raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, "
                     f"temperature={temperature}")
  bank_s, labels_s, valid_s = _shard_bank(
      mesh, np.asarray(bank, np.float32), np.asarray(bank_labels, np.int32))
  fn = functools.partial(_replica_scores, k=k, temperature=temperature,
                         num_classes=num_classes)
  step = jax.jit(parallel.per_replica(
      fn, mesh, in_specs=(P(AXIS), P(AXIS), P(AXIS), P()), out_specs=P()))
  replicated = NamedSharding(mesh, P())
  queries = np.asarray(queries, np.float32)
  out = []
  for start in range(0, len(queries), chunk):
    q = queries[start:start + chunk]
    if len(q) < chunk:  # one compiled shape: pad the last chunk
      q = np.concatenate([q, np.zeros((chunk - len(q), q.shape[1]), q.dtype)])
    q = jax.make_array_from_callback(q.shape, replicated, lambda i, q=q: q[i])
    scores = parallel.to_host(step(bank_s, labels_s, valid_s, q))
    out.append(scores[:min(chunk, len(queries) - start)])
  return np.concatenate(out) if out else np.zeros((0, num_classes), np.float32)


def accuracy(scores: np.ndarray, labels: np.ndarray,
             top_k: int = 5) -> Dict[str, Any]:
  """Exact top-1 / top-k accuracy of host scores (ties go to the lower class).

  Args:
    scores: [Q, C] class scores.
    labels: int [Q] true classes.
    top_k: k of the top-k accuracy (clipped to C).

  Returns:
    {'top1', 'top5', 'num_examples'}.
  """
  k = min(top_k, scores.shape[1])
  order = np.argsort(-scores, axis=1, kind="stable")
  top1 = order[:, 0] == labels
  topk = np.any(order[:, :k] == labels[:, None], axis=1)
  return {"top1": float(top1.mean()), "top5": float(topk.mean()),
          "num_examples": int(len(labels))}


def knn_eval(config: ml_collections.ConfigDict,
             arrays: Dict[str, Tuple[np.ndarray, np.ndarray]], num_classes: int,
             mesh) -> Dict[str, Any]:
  """kNN accuracy on the eval split with the labelled train features as memory.

  Args:
    config: the full configuration (eval.knn_k, eval.knn_temperature,
      eval.knn_query_chunk).
    arrays: from `features.split_arrays`.
    num_classes: number of classes.
    mesh: the device mesh.

  Returns:
    {'top1', 'top5', 'num_examples', 'k', 'temperature', 'memory_size'}.
  """
  (x_tr, y_tr), (x_ev, y_ev) = arrays["train"], arrays["eval"]
  scores = knn_scores(x_tr, y_tr, x_ev, int(config.eval.knn_k),
                      float(config.eval.knn_temperature), num_classes, mesh,
                      int(config.eval.knn_query_chunk))
  return dict(accuracy(scores, y_ev), k=int(config.eval.knn_k),
              temperature=float(config.eval.knn_temperature),
              memory_size=int(len(y_tr)))


class KnnEval(evals_base.Evaluator):
  """The kNN monitor as an evaluator: labelled train features as memory.

  Reads `config.eval.knn_*` (through `knn_eval`); the features it scores
  come from a shared `features.SplitFeatures`.
  """

  name = "knn"
  sections = ("eval",)  # the config it is given (registry.sliced)

  def __init__(self, config: ml_collections.ConfigDict,
               features: features_lib.SplitFeatures, num_classes: int, mesh,
               periodic: bool = True):
    """Shares `features` with other feature evaluators of the same model."""
    self.periodic = periodic
    self._config, self._features = config, features
    self._num_classes, self._mesh = num_classes, mesh

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Dict[str, Any]:
    """kNN accuracy on the eval split; see `evals.base.Evaluator`."""
    del writer  # scalars only, written by the loop
    return knn_eval(self._config, self._features.get(variables, step),
                    self._num_classes, self._mesh)
