"""Device mesh, the one axis name, shard_map wrapping and host<->device helpers.

Every collective in the library (BatchNorm statistics, the loss's all_gather,
gradient and metric means) names the same axis, `AXIS`, so that the per-replica
code reads exactly like the pmap code it replaces.

This is also the one place that knows which JAX it runs on (jax 0.8 to 0.12):
the mesh's axis type is stated (`Auto`) instead of left to a default that
`jax.make_mesh` already gives differently (`Explicit`), and `shard_map` is
taken from `jax` when it is there and from `jax.experimental` otherwise.
"""

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The single data-parallel axis. Used by BatchNorm, the losses and every pmean.
AXIS = "batch"

# Auto axes: arrays outside the mapped step may be resharded by XLA as needed
# (the behaviour this code is written for); under Explicit axes some global
# ops would raise instead. None where JAX predates axis types.
_AUTO_AXIS = getattr(getattr(jax.sharding, "AxisType", None), "Auto", None)


def _shard_map():
  """`jax.shard_map` (jax >= 0.7) or the experimental one, as (fn, kwargs)."""
  if hasattr(jax, "shard_map"):
    # check_vma=False: pmap's semantics (see `per_replica`).
    return jax.shard_map, {"check_vma": False}
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map, {"check_rep": False}


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Returns a one-axis mesh over all (global) devices.

  Args:
    devices: devices to use; defaults to `jax.devices()` (all processes).

  Returns:
    A `Mesh` with the single axis `AXIS`.
  """
  devices = list(jax.devices() if devices is None else devices)
  if _AUTO_AXIS is None:
    return Mesh(np.asarray(devices), (AXIS,))
  return Mesh(np.asarray(devices), (AXIS,), axis_types=(_AUTO_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading (batch) dimension over `AXIS`."""
  return NamedSharding(mesh, P(AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device."""
  return NamedSharding(mesh, P())


def per_replica(fn: Callable[..., Any], mesh: Mesh, in_specs: Any,
                out_specs: Any) -> Callable[..., Any]:
  """Maps a per-replica function over the mesh, as pmap would.

  `check_vma=False` gives pmap's semantics: a gradient taken inside the map is
  the per-device gradient (the caller pmeans it), and collectives transpose as
  they do under pmap (all_gather -> reduce-scatter, psum -> psum).

  Args:
    fn: function written for one replica, using collectives over `AXIS`.
    mesh: the device mesh.
    in_specs: PartitionSpecs of the inputs (`P()` replicated, `P(AXIS)` split).
    out_specs: PartitionSpecs of the outputs.

  Returns:
    The mapped function (not jitted; wrap it in `jax.jit`).
  """
  shard_map, checks = _shard_map()
  return shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                   **checks)


def host_to_global(mesh: Mesh, tree: Any) -> Any:
  """Turns this host's batch (NumPy) into global arrays split over `AXIS`.

  Each process passes its own rows; the global leading dimension is the sum
  over processes. Arrays that already are global and split over `AXIS` (the
  synthetic source makes its batches on the devices) pass through untouched.

  Args:
    mesh: the device mesh.
    tree: pytree of host-local NumPy arrays with a common leading dimension,
      or of global arrays already split over the batch axis.

  Returns:
    The same pytree of global `jax.Array`s sharded along the batch axis.
  """
  sharding = batch_sharding(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding,
                                                                x.ndim):
      return x
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Places a pytree (identical on every host) replicated on all devices."""
  sharding = replicated_sharding(mesh)
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def to_host(tree: Any) -> Any:
  """Fetches a pytree of replicated or fully addressable arrays to NumPy.

  For arrays split over several processes, use `process_allgather` from
  `jax.experimental.multihost_utils` instead.
  """
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        # A local shard would silently stand in for the whole array.
        raise ValueError(f"to_host got an array of shape {x.shape} split "
                         f"over processes ({x.sharding}); use "
                         "multihost_utils.process_allgather")
      # Replicated across processes: every process holds a full copy.
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def local_device_count() -> int:
  """Number of devices attached to this process."""
  return jax.local_device_count()
