"""Multi-host start-up: `jax.distributed` initialisation and config agreement.

One program runs on every host (process) of a TPU pod slice or GPU cluster.
`initialize` must run before anything else touches JAX devices:

* explicit settings (`--coordinator_address`, `--num_processes`,
  `--process_id`) for any cluster, e.g. several processes on 127.0.0.1;
* otherwise automatic detection by JAX on Cloud TPU pods, SLURM (`srun`)
  and Open MPI; a plain machine stays a single process and needs no flag.

On CPU, cross-process collectives use gloo. `check_config_agreement` then
makes every process compare its configuration with all others, so a host
started with different flags fails with the differing fields named instead
of hanging in, or silently corrupting, a collective.
"""

import hashlib
import json
import logging as std_logging
from typing import Any, Dict, List, Optional

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging

MODES = ("auto", "off")
# The message of jax.distributed.initialize() when no cluster was detected.
_NO_CLUSTER = "coordinator_address should be defined"


def define_flags() -> None:
  """Defines --coordinator_address, --num_processes, --process_id, --distributed.

  Safe to call more than once (e.g. by an entry point and a test worker).
  """
  if "coordinator_address" in flags.FLAGS:
    return
  flags.DEFINE_string(
      "coordinator_address", None,
      "host:port of process 0's coordinator (multi-process runs without an "
      "auto-detected cluster, e.g. 10.0.0.1:1234 or 127.0.0.1:PORT).")
  flags.DEFINE_integer("num_processes", None,
                       "Number of processes (hosts) in the run.")
  flags.DEFINE_integer("process_id", None,
                       "This process's index in [0, num_processes).")
  flags.DEFINE_enum(
      "distributed", "auto", MODES,
      "auto: initialise jax.distributed from the flags above or a detected "
      "TPU pod / SLURM / Open MPI environment; off: single process.")


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None,
               mode: str = "auto",
               initialization_timeout_s: int = 300,
               heartbeat_timeout_s: int = 100) -> bool:
  """Initialises multi-host JAX; call once, before any other JAX use.

  Args:
    coordinator_address: 'host:port' of process 0; None to auto-detect.
    num_processes: number of processes; None to auto-detect.
    process_id: this process's index; None to auto-detect.
    mode: 'auto' (explicit settings, else cluster detection, else a single
      process) or 'off' (single process; explicit settings are an error).
    initialization_timeout_s: how long to wait for all processes to connect.
    heartbeat_timeout_s: after this long without a heartbeat a process is
      declared dead and the others stop, instead of waiting forever.

  Returns:
    True when `jax.distributed` was initialised, False for a plain
    single-process run.

  Raises:
    ValueError: for an unknown mode, inconsistent explicit settings, or
      settings that neither the arguments nor the environment complete.
  """
  explicit = {"coordinator_address": coordinator_address,
              "num_processes": num_processes, "process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if mode not in MODES:
    raise ValueError(f"distributed mode {mode!r} is invalid: allowed {MODES}")
  if mode == "off":
    if given:
      raise ValueError(f"--distributed=off but {sorted(given)} were given: "
                       "drop them or use --distributed=auto")
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes} is invalid: must be "
                     ">= 1")
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(f"--process_id={process_id} is invalid: must be in "
                     f"[0, --num_processes={num_processes})")
  # Cross-process collectives on CPU (tests, CPU clusters); GPUs/TPUs use
  # their own. Must be set before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=int(initialization_timeout_s),
        heartbeat_timeout_seconds=int(heartbeat_timeout_s))
  except ValueError as e:
    if given or _NO_CLUSTER not in str(e):
      missing = sorted(set(explicit) - set(given))
      hint = (f" Outside TPU pods, SLURM and Open MPI also pass --"
              f"{' --'.join(missing)}." if missing else "")
      raise ValueError(f"cannot start a multi-process run from "
                       f"{given or 'no flags'}: {e}.{hint}") from e
    logging.info("No cluster environment detected: single-process run.")
    return False
  logging.info("jax.distributed initialised: process %d of %d",
               jax.process_index(), jax.process_count())
  return True


def initialize_from_flags(config: Optional[ml_collections.ConfigDict] = None
                          ) -> bool:
  """`initialize` with the flags of `define_flags` and timeouts from `config`.

  Args:
    config: the run configuration (its `distributed` block), or None for the
      defaults.

  Returns:
    Whether `jax.distributed` was initialised.
  """
  fl = flags.FLAGS
  dist = config.get("distributed") if config is not None else None
  kwargs = {}
  if dist is not None:
    for field in ("initialization_timeout_s", "heartbeat_timeout_s"):
      value = dist[field]
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.distributed.{field}={value!r} is invalid: "
                         "a whole number of seconds >= 1 is required")
    kwargs = dict(initialization_timeout_s=dist.initialization_timeout_s,
                  heartbeat_timeout_s=dist.heartbeat_timeout_s)
  started = initialize(fl.coordinator_address, fl.num_processes,
                       fl.process_id, fl.distributed, **kwargs)
  if dist is not None and not dist.log_all_processes:
    quiet_secondary_processes()
  return started


def quiet_secondary_processes() -> None:
  """Keeps INFO logs on process 0 only; other processes log warnings and errors."""
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger().setLevel(std_logging.WARNING)


def _flat(config: Any, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k in sorted(config.keys()):
    v = config[k]
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _digest(text: str) -> int:
  # 31 bits of SHA-256: fits int32 (JAX's default integer on every backend).
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4],
                        "little") & 0x7FFFFFFF


def fingerprint(config: ml_collections.ConfigDict,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
  """Maps each leaf field of `config` (and of `extra`) to a stable hash.

  Args:
    config: the configuration.
    extra: further values that must agree (e.g. {'workdir': ...}).

  Returns:
    {'a.b.c': 31-bit hash of the field's JSON value}.
  """
  return {k: _digest(json.dumps(v, sort_keys=True, default=repr))
          for k, v in _fields(config, extra).items()}


def _fields(config: Any, extra: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  fields = _flat(config.to_dict() if hasattr(config, "to_dict") else config)
  fields.update({f"<{k}>": v for k, v in (extra or {}).items()})
  return fields


def _allgather(values: np.ndarray) -> np.ndarray:
  """[P, ...] stack of every process's int32 `values` (same shape everywhere)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(
      np.asarray(values, np.int32)))


def check_config_agreement(config: ml_collections.ConfigDict,
                           extra: Optional[Dict[str, Any]] = None) -> None:
  """Raises on every process if the processes disagree on the configuration.

  Every process contributes the hash of its field names, then a hash per
  field; all processes see all hashes, so all raise the same error together.
  A single-process run returns at once.

  Args:
    config: this process's configuration.
    extra: further values that must agree (e.g. {'workdir': ...}).

  Raises:
    ValueError: naming the fields (and processes) that differ.
  """
  if jax.process_count() == 1:
    return
  prints = fingerprint(config, extra)
  names = sorted(prints)
  keys = _allgather(np.array([len(names), _digest("\n".join(names))]))
  if np.any(keys != keys[0]):
    odd = [int(p) for p in np.flatnonzero(np.any(keys != keys[0], axis=1))]
    raise ValueError(
        f"processes {odd} have a different set of config fields than process "
        f"0 (this is process {jax.process_index()}): start every process "
        "with the same --config file and overrides")
  table = _allgather(np.array([prints[k] for k in names]))  # [P, fields]
  differ = np.any(table != table[0], axis=0)
  if np.any(differ):
    fields = [names[i] for i in np.flatnonzero(differ)]
    which: List[int] = [int(p) for p in
                        np.flatnonzero(np.any(table != table[0], axis=1))]
    mine = _fields(config, extra)
    shown = ", ".join(f"{f}={mine.get(f, '?')!r}" for f in fields[:20])
    raise ValueError(
        f"processes disagree on config fields {fields}: processes {which} "
        f"differ from process 0; this process ({jax.process_index()}) has "
        f"{shown}. Start every process with the same --config file and "
        "overrides.")
