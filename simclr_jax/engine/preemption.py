"""Preemption and numerical safety for long training loops.

Preemption: SIGTERM (what Cloud TPU, Kubernetes and SLURM send before an
eviction) and SIGINT (Ctrl-C) only set a flag; the loop finishes the step in
flight, saves a checkpoint on every process and raises `Preempted`, which the
entry point turns into exit status `PREEMPTED_EXIT_CODE`. With several
processes all of them must stop at the same step, so the decision is agreed
on: through JAX's preemption sync manager (`reached_preemption_sync_point`,
which owns SIGTERM once `jax.distributed` is initialised) at every step, and
through one tiny all-gather of the local flags at log steps. Because the loop
keeps at most `train.max_steps_in_flight` steps ahead of the device, the
step at which the stop is seen is at most that many steps past the one the
device was running. A signal the sync manager does not see (SIGINT on a
multi-process run, or a runtime without the manager) is agreed on at the
next log step instead. A second signal ends the process at once
(`exit_at_once`).

Numerical safety: `check_finite_metrics` and `check_finite_tree` stop a run at
the first non-finite loss or gradient norm, and before any checkpoint could
store non-finite values.
"""

import os
import signal
import threading
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "temporary failure, the user is invited to retry".
# Schedulers can requeue on it; rerunning the same command resumes.
PREEMPTED_EXIT_CODE = 75
# Metrics whose finiteness is checked at log steps and before every save.
GUARDED_METRICS = ("loss", "total_loss", "grad_norm")


class Preempted(Exception):
  """Raised after the preemption checkpoint has been written and committed."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"preempted ({reason}) at step {step}; the checkpoint of "
                     f"step {step} is saved and the run resumes from it")
    self.step = step
    self.reason = reason


class NonFiniteError(FloatingPointError):
  """A loss, gradient norm or state value became NaN or Inf."""


class PreemptionGuard:
  """Turns termination signals into a clean stop at a step boundary.

  Use as a context manager around the training loop; the previous signal
  handlers are restored on exit. Call `should_stop(step, sync)` after every
  step: `sync` must be True on the same steps on every process (log steps).
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM,
                                               signal.SIGINT)):
    """Prepares (but does not install) the handlers.

    Args:
      signals: signals that request a stop.
    """
    self._signals = tuple(signals)
    self._previous: Dict[int, Any] = {}
    self._received: Optional[str] = None
    self._multi = jax.process_count() > 1
    self._sync_manager = self._multi and _has_preemption_sync_manager()

  @property
  def requested(self) -> Optional[str]:
    """Name of the signal received by this process, or None."""
    return self._received

  def request(self, reason: str) -> None:
    """Asks for a stop at the next step boundary (what the handler does)."""
    if self._received is None:
      logging.warning("Received %s: stopping after the current step and "
                      "saving a checkpoint.", reason)
    self._received = reason

  def _handle(self, signum, frame) -> None:
    del frame  # unused
    if self._received is not None:
      exit_at_once(signal.Signals(signum).name)  # the operator insists
    self.request(signal.Signals(signum).name)

  def __enter__(self) -> "PreemptionGuard":
    self._received = None  # a guard may be reused for a later run
    if threading.current_thread() is not threading.main_thread():
      return self  # Python allows handlers only in the main thread.
    for signum in self._signals:
      if signum == signal.SIGTERM and self._sync_manager:
        continue  # JAX's preemption notifier owns SIGTERM in multi-host runs.
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def should_stop(self, step: int, sync: bool) -> Optional[str]:
    """Whether every process should stop (and save) after `step`.

    Args:
      step: the step just finished.
      sync: True on steps where every process calls this with sync=True
        (e.g. log steps); only then are local signals combined across
        processes, so other steps stay free of host synchronisation.

    Returns:
      The reason to stop, or None to continue.
    """
    if not self._multi:
      return self._received
    if self._sync_manager and _reached_sync_point(step):
      return "SIGTERM (preemption notice)"
    if sync:
      flags = multihost_utils.process_allgather(
          np.asarray(self._received is not None, np.int32))
      if np.any(flags):
        return self._received or "signal on another process"
    return None


def exit_at_once(reason: str) -> None:
  """Ends the process now, with one line and no traceback.

  Used for a second stop signal, which may come while a checkpoint is being
  committed: orbax writes each checkpoint into a temporary folder and renames
  it into place only when complete, so ending here leaves every checkpoint
  either committed or absent, never half-written (the temporary folder is
  removed by the next run's first save). No Python cleanup runs: it would
  wait for the very save the operator asked not to wait for.

  Args:
    reason: what asked for it (a signal's name).
  """
  # os.write: a signal handler may interrupt a print on the same stream.
  os.write(2, (f"error: second {reason}: stopped at once; checkpoints "
               "committed before it are intact and a save in progress is "
               "discarded, never half-written; rerun the same command to "
               "resume from the newest committed one\n").encode())
  os._exit(128 + getattr(signal, reason, signal.SIGINT))


def _has_preemption_sync_manager() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


def _reached_sync_point(step: int) -> bool:
  return bool(multihost_utils.reached_preemption_sync_point(step))


def check_finite_metrics(history: Iterable[Tuple[int, Dict[str, Any]]],
                         names: Sequence[str] = GUARDED_METRICS,
                         last_good: Optional[int] = None) -> None:
  """Raises NonFiniteError at the first step whose guarded metric is not finite.

  Args:
    history: (step, host metrics dict) pairs in step order.
    names: metric names to check (those absent in a dict are ignored).
    last_good: step of the newest checkpoint on disk, for the message.

  Raises:
    NonFiniteError: naming the step, the quantity and its value.
  """
  for step, metrics in history:
    for name in names:
      if name in metrics and not np.all(np.isfinite(metrics[name])):
        raise NonFiniteError(
            f"non-finite {name}={float(np.asarray(metrics[name]))} at step "
            f"{step}; stopping before any checkpoint stores it. "
            f"{_last_good_text(last_good)} Lower optim.base_lr or check the "
            "data, then rerun (it resumes from that checkpoint).")


def _last_good_text(last_good: Optional[int]) -> str:
  if last_good:
    return f"The last good checkpoint (step {last_good}) is kept."
  return "No checkpoint had been written yet."


@jax.jit
def _all_finite(leaves):
  return [jnp.all(jnp.isfinite(x)) for x in leaves]


def check_finite_tree(tree: Any, step: int,
                      last_good: Optional[int] = None) -> None:
  """Raises NonFiniteError if any floating leaf of `tree` has NaN or Inf.

  Args:
    tree: a pytree of arrays (e.g. the train state about to be saved).
    step: the step the tree belongs to, for the message.
    last_good: step of the newest checkpoint on disk, for the message.

  Raises:
    NonFiniteError: naming the step and the first offending leaves.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  floats = [(p, x) for p, x in flat
            if np.issubdtype(np.dtype(x.dtype), np.inexact)]
  flags = jax.device_get(_all_finite([x for _, x in floats]))
  bad = ["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in p)
         for (p, _), ok in zip(floats, flags) if not ok]
  if bad:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more"
                                  if len(bad) > 5 else "")
    raise NonFiniteError(
        f"non-finite values in the train state at step {step} ({shown}); "
        f"not saving it. {_last_good_text(last_good)} Lower optim.base_lr or "
        "check the data, then rerun (it resumes from that checkpoint).")
