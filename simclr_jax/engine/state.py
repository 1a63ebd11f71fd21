"""The train state every mode updates, and the helpers that build and map steps.

A state is a pytree of replicated global arrays (what orbax saves on every
host). Each mode's step is written for one replica with named-axis
collectives and mapped over the one-axis mesh by `make_step`: jit(shard_map)
with the state donated, pmap's semantics with global arrays.
"""

import functools
from typing import Any, Callable, Dict, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel

AXIS = parallel.AXIS
@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a pytree of global arrays (replicated).

  `params` are the trained parameters (the whole model, or only a head when
  the encoder is frozen); `batch_stats` the BatchNorm statistics they own.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @property
  def variables(self) -> Dict[str, Any]:
    """The Flax variables {'params', 'batch_stats'}."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  def apply_gradients(self, grads: Any, tx: optax.GradientTransformation,
                      batch_stats: Any = None) -> "TrainState":
    """One optimizer update: the next step's state.

    Args:
      grads: gradients of `params` (already averaged over replicas).
      tx: the optimizer whose state `opt_state` is.
      batch_stats: the updated BatchNorm statistics (None = unchanged).

    Returns:
      The state with step + 1, updated parameters and optimizer state.
    """
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(
        step=self.step + 1, params=optax.apply_updates(self.params, updates),
        opt_state=opt_state,
        batch_stats=self.batch_stats if batch_stats is None else batch_stats)


def init_variables(model, image_size: int, seed: int) -> Dict[str, Any]:
  """Initialises model variables on the host (outside any mapped axis)."""
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(seed), dummy)
  return jax.device_get(variables)


def new_state(mesh, params: Any, batch_stats: Any,
              tx: optax.GradientTransformation) -> TrainState:
  """A replicated step-0 state of `params` with a fresh optimizer state."""
  state = TrainState(step=np.zeros((), np.int32), params=params,
                     batch_stats=batch_stats, opt_state=tx.init(params))
  return parallel.replicate(mesh, jax.device_get(state))


def create_train_state(model, tx: optax.GradientTransformation,
                       image_size: int, seed: int, mesh) -> TrainState:
  """Initialises parameters (same on every process) and optimizer state, replicated.

  Args:
    model: the Flax model.
    tx: the optimizer.
    image_size: input side for shape inference.
    seed: parameter-init seed; identical on all processes so the replicas agree.
    mesh: the device mesh.

  Returns:
    A replicated `TrainState` at step 0.
  """
  variables = init_variables(model, image_size, seed)
  return new_state(mesh, variables["params"],
                   variables.get("batch_stats", {}), tx)


def make_step(replica_fn: Callable, mesh, num_replicated: int = 0) -> Callable:
  """jit(shard_map(replica_fn)) of (state, *replicated, batch), state donated.

  Args:
    replica_fn: (state, *replicated, batch) -> (state, metrics) for one
      replica; metrics already pmean'd.
    mesh: the device mesh.
    num_replicated: read-only replicated inputs between the state and the
      batch (a frozen encoder, a teacher).

  Returns:
    The mapped and jitted step.
  """
  in_specs = (P(),) * (1 + num_replicated) + (P(AXIS),)
  mapped = parallel.per_replica(replica_fn, mesh, in_specs=in_specs,
                                out_specs=(P(), P()))
  return jax.jit(mapped, donate_argnums=(0,))


def mean_metrics(pending: Sequence[Dict[str, Any]]) -> Dict[str, float]:
  """Fetches a list of per-step metric dicts (one host sync) and averages them."""
  fetched = jax.device_get(list(pending))
  keys = fetched[0].keys()
  return {k: float(np.mean([m[k] for m in fetched])) for k in keys}
