"""Fast linear probe: L2-regularised logistic regression on frozen features.

Features are extracted once (no augmentation); the multinomial logistic
regression is convex, so it is solved to convergence with L-BFGS (optax)
instead of being trained for epochs with SGD. The L2 strength is chosen on a
class-balanced validation split carved from the labelled training examples,
then the probe is refitted on all of them and scored on the eval split.
"""

import functools
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import optax.tree_utils as otu

from simclr_jax import data as data_lib
from simclr_jax.evals import base as evals_base
from simclr_jax.evals import knn

Params = Dict[str, jax.Array]


def objective(params: Params, x: jax.Array, y: jax.Array,
              l2: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy + l2/2 * ||W||^2 (the bias is not penalised).

  Args:
    params: {'w': [d, C], 'b': [C]}.
    x: float [n, d] features.
    y: int [n] labels.
    l2: the regularisation strength.

  Returns:
    The scalar objective.
  """
  logits = x @ params["w"] + params["b"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return ce + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iters"))
def fit_logistic(x: jax.Array, y: jax.Array, l2: float, *, num_classes: int,
                 max_iters: int, tol: float = 1e-5) -> Tuple[Params, Any]:
  """Minimises `objective` with L-BFGS + zoom line search, from zeros.

  Args:
    x: float32 [n, d] features.
    y: int32 [n] labels.
    l2: regularisation strength (traced: one compile for a whole grid).
    num_classes: number of classes C.
    max_iters: iteration cap.
    tol: stop once the gradient's L2 norm is below this.

  Returns:
    (params, (iterations, final gradient norm)).
  """
  params = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32),
            "b": jnp.zeros((num_classes,), jnp.float32)}
  fun = functools.partial(objective, x=x, y=y, l2=l2)
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value,
                                   grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def not_done(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    err = otu.tree_l2_norm(otu.tree_get(state, "grad"))
    return (count == 0) | ((count < max_iters) & (err >= tol))

  params, state = jax.lax.while_loop(not_done, step,
                                     (params, solver.init(params)))
  grad_norm = otu.tree_l2_norm(jax.grad(fun)(params))
  return params, (otu.tree_get(state, "count"), grad_norm)


def scores(params: Params, x: np.ndarray) -> np.ndarray:
  """Class scores (logits) [n, C] of features x under a fitted probe."""
  return np.asarray(x @ np.asarray(params["w"]) + np.asarray(params["b"]))


def standardize(train: np.ndarray, *others: np.ndarray, enabled: bool = True):
  """Centres and scales by the training features' mean and std (std floor 1e-6).

  Args:
    train: [n, d] training features (the statistics come from these only).
    *others: further feature arrays to transform the same way.
    enabled: when False, returns the arrays unchanged.

  Returns:
    The transformed arrays, training features first.
  """
  arrays = (train,) + others
  if not enabled:
    return arrays
  mean = train.mean(0)
  std = np.maximum(train.std(0), 1e-6)
  return tuple(((a - mean) / std).astype(np.float32) for a in arrays)


def _fit(config, x, y, l2, num_classes) -> Tuple[Params, Dict[str, float]]:
  params, (iters, gnorm) = fit_logistic(
      jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), l2,
      num_classes=num_classes, max_iters=int(config.eval.probe_max_iters),
      tol=float(config.eval.probe_tol))
  return params, {"iterations": int(iters), "grad_norm": float(gnorm)}


def fast_probe(config: ml_collections.ConfigDict,
               arrays: Dict[str, Tuple[np.ndarray, np.ndarray]],
               num_classes: int) -> Dict[str, Any]:
  """Chooses the L2 strength on a validation split, refits, scores the eval split.

  Args:
    config: the full configuration (eval.probe_* fields, eval.label_seed).
    arrays: {'train': (x, y) labelled examples, 'eval': (x, y)} on the host,
      e.g. from `features.split_arrays`.
    num_classes: number of classes.

  Returns:
    {'top1', 'top5', 'num_examples', 'l2', 'val_top1' (per L2 strength),
    'num_train', 'iterations', 'grad_norm'}.
  """
  (x_tr, y_tr), (x_ev, y_ev) = arrays["train"], arrays["eval"]
  grid = [float(v) for v in config.eval.probe_l2_grid]
  if not grid or min(grid) < 0:
    raise ValueError(f"config.eval.probe_l2_grid={grid!r} is invalid: a "
                     "non-empty list of strengths >= 0 is required")
  val_idx = data_lib.class_balanced_subset(
      y_tr, float(config.eval.probe_val_fraction), int(config.eval.label_seed))
  fit_idx = np.setdiff1d(np.arange(len(y_tr)), val_idx)
  if len(fit_idx) == 0:
    raise ValueError("config.eval.probe_val_fraction="
                     f"{config.eval.probe_val_fraction} leaves no examples to "
                     f"fit on ({len(y_tr)} labelled)")
  std = bool(config.eval.probe_standardize)
  x_fit, x_val = standardize(x_tr[fit_idx], x_tr[val_idx], enabled=std)
  val_top1 = {}
  for l2 in grid:
    params, _ = _fit(config, x_fit, y_tr[fit_idx], l2, num_classes)
    val_top1[l2] = knn.accuracy(scores(params, x_val), y_tr[val_idx])["top1"]
  # Ties go to the strongest regularisation (the simpler model).
  best = max(grid, key=lambda l2: (val_top1[l2], l2))
  x_all, x_test = standardize(x_tr, x_ev, enabled=std)
  params, info = _fit(config, x_all, y_tr, best, num_classes)
  result = knn.accuracy(scores(params, x_test), y_ev)
  return dict(result, l2=best, num_train=int(len(y_tr)),
              val_top1={str(k): v for k, v in val_top1.items()}, **info)


class FastProbeEval(evals_base.Evaluator):
  """The fast probe as an evaluator (by default only at the end).

  Reads `config.eval.probe_*` (through `fast_probe`).
  """

  name = "linear_probe"
  sections = ("eval",)  # the config it is given (registry.sliced)

  def __init__(self, config: ml_collections.ConfigDict, features: Any,
               num_classes: int, periodic: bool = False):
    """`features` is a `features.SplitFeatures` shared with the kNN monitor."""
    self.periodic = periodic
    self._config, self._features = config, features
    self._num_classes = num_classes

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Dict[str, Any]:
    """Fits and scores the probe; see `evals.base.Evaluator`."""
    del writer  # scalars only, written by the loop
    return fast_probe(self._config, self._features.get(variables, step),
                      self._num_classes)
