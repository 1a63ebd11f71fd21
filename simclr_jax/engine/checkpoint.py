"""Training checkpoints: save, resume, and what cannot be read.

Training checkpoints live in `<workdir>/checkpoints/<step>/` (orbax
CheckpointManager, async, atomic: a step directory appears only once it is
complete, so a kill during a save leaves the previous checkpoint readable).
The export format (what an encoder artifact is) is `simclr_jax.exports.format`.

A checkpoint that cannot be read is set aside in
`<workdir>/checkpoints.unreadable/` and the run resumes from an older one;
only a readable checkpoint of other shapes counts as a different model.
"""

import logging as std_logging
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from etils import epath
from absl import logging
from jax.experimental import multihost_utils

from simclr_jax import config as config_lib

CHECKPOINT_SUBDIR = "checkpoints"
# orbax writes a replicated array as slices, one per replica, cut on the
# devices by a small program compiled per shape: ~160 compiles, 7-9 s, at the
# first save of even a tiny ResNet on CPU. Parallel writes pay off for large
# arrays on many hosts; arrays whose slices would be smaller than this are
# written whole by one replica.
REPLICA_SLICE_MIN_BYTES = 1 << 20


def _register_array_handler() -> None:
  """Makes orbax write small replicated arrays whole (once per process)."""
  default = ocp.type_handlers.get_type_handler(jax.Array)
  if getattr(default, "simclr_jax", False):
    return
  handler = ocp.type_handlers.ArrayHandler(
      # Kept as orbax set it: the per-host array metadata of its default.
      array_metadata_store=getattr(default, "_array_metadata_store", None),
      min_slice_bytes_for_replica_parallel=REPLICA_SLICE_MIN_BYTES)
  handler.simclr_jax = True
  # orbax warns of every override; this one is deliberate.
  absl_logger = std_logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(std_logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl_logger.setLevel(level)


def workdir_path(workdir: str) -> epath.Path:
  """The workdir as a path: local ones made absolute, `gs://...` kept as is.

  Workdirs (checkpoints, events, results) may live on Cloud Storage, as TPU
  pod runs need; exports are local directories.
  """
  if "://" in workdir:
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(workdir))


class Checkpointer:
  """Saves and restores the train state in a workdir; call on every process."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    """Opens (or creates) `<workdir>/checkpoints`.

    Args:
      workdir: the run directory.
      keep: number of most recent checkpoints kept.
      async_save: write in a background thread (wait() before exit).
    """
    self.directory = str(workdir_path(workdir) / CHECKPOINT_SUBDIR)
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
        # Partial step directories left by a kill during a save are never
        # read; they are removed before this manager's first save.
        cleanup_tmp_directories=True)
    # Naming the handler lets a fresh manager read item metadata (shapes)
    # before any restore, which the shape check needs.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def all_steps(self):
    """Steps of all complete checkpoints, oldest first."""
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = True) -> bool:
    """Saves `state` (a pytree of global arrays) as checkpoint `step`."""
    # orbax's own INFO lines are filtered from the console (see logs.py).
    logging.info("Saving checkpoint at step %d", step)
    return self._manager.save(step, args=ocp.args.StandardSave(state),
                              force=force)

  def restore(self, step: int, target: Any) -> Any:
    """Restores checkpoint `step` into the structure, shapes and shardings of `target`.

    Args:
      step: the checkpoint step.
      target: a pytree of arrays or `jax.ShapeDtypeStruct`s (with shardings)
        that the restored values must match.

    Returns:
      The restored pytree.

    Raises:
      ValueError: naming the leaves whose shapes differ from `target`.
    """
    saved = self.item_shapes(step)
    check_shapes(saved, target, f"checkpoint {self.directory}/{step}")
    abstract = jax.tree.map(_abstract, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def item_shapes(self, step: int) -> Dict[str, Tuple[int, ...]]:
    """Maps 'a/b/c' leaf paths of checkpoint `step` to their shapes."""
    meta = self._manager.item_metadata(step)
    if meta is None:
      raise ValueError(f"checkpoint {self.directory}/{step} has no readable "
                       "item metadata")
    return _flat_shapes(meta)

  def wait(self) -> None:
    """Blocks until pending async saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases resources (idempotent)."""
    if self._manager is None:
      return
    self._manager.wait_until_finished()
    self._manager.close()
    self._manager = None


def _abstract(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _flat_shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {_path_str(p): tuple(v.shape) for p, v in flat if hasattr(v, "shape")}


def check_shapes(saved: Any, target: Any, what: str) -> None:
  """Raises ValueError naming every leaf missing, extra or mis-shaped in `saved`.

  Args:
    saved: pytree (or 'a/b' -> shape dict) of what was stored.
    target: pytree of what the model expects.
    what: description of the source, for the message.
  """
  saved_shapes = saved if isinstance(saved, dict) and all(
      isinstance(v, tuple) for v in saved.values()) else _flat_shapes(saved)
  target_shapes = _flat_shapes(target)
  problems = []
  for k in sorted(set(target_shapes) - set(saved_shapes)):
    problems.append(f"missing {k} (model expects {target_shapes[k]})")
  for k in sorted(set(saved_shapes) - set(target_shapes)):
    problems.append(f"unexpected {k} {saved_shapes[k]}")
  for k in sorted(set(saved_shapes) & set(target_shapes)):
    if saved_shapes[k] != target_shapes[k]:
      problems.append(f"shape mismatch at {k}: stored {saved_shapes[k]}, "
                      f"model expects {target_shapes[k]}")
  if problems:
    shown = "\n  ".join(problems[:30])
    more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
    raise ValueError(f"{what} does not fit the configured model:\n  "
                     f"{shown}{more}")


UNREADABLE_SUBDIR = "checkpoints.unreadable"


def resume(workdir: str, keep: int, target: Any, start_over: bool = False
           ) -> Tuple[Checkpointer, int, Any]:
  """Opens the workdir's checkpoints and restores the newest usable one.

  A checkpoint that cannot be read (missing or garbage metadata, a missing
  item directory, a truncated data file) is named, moved to
  `<workdir>/checkpoints.unreadable/` (never deleted) and the next older one
  is tried. A readable checkpoint whose shapes differ from `target` belongs
  to a different model: the run is refused, or with `start_over` the whole
  checkpoint directory is moved aside and training starts at step 0.

  Args:
    workdir: the run directory.
    keep: number of most recent checkpoints kept.
    target: pytree of arrays (with shardings) of the configured state.
    start_over: move a different model's checkpoints aside instead of
      refusing. Checkpoints that fit are always resumed, so a requeued job
      never loses its progress.

  Returns:
    (checkpointer, step resumed from (0 for a fresh start), state).

  Raises:
    ValueError: the newest readable checkpoint does not fit and
      `start_over` is off; the message lists the mismatched leaves.
  """
  checkpointer = Checkpointer(workdir, keep)
  while True:
    step = checkpointer.latest_step()
    if not step:
      _check_nothing_unreadable(workdir, start_over)
      return checkpointer, 0, target
    where = f"checkpoint {checkpointer.directory}/{step}"
    try:
      saved = checkpointer.item_shapes(step)
      if not saved:
        raise ValueError("it holds no arrays (item missing)")
    except Exception as e:  # pylint: disable=broad-except
      checkpointer = _set_aside(checkpointer, workdir, keep, step, e)
      continue
    try:
      check_shapes(saved, target, where)
    except ValueError as e:
      if not start_over:
        # A ConfigError: the commands print it without a traceback (exit 2).
        raise config_lib.ConfigError(
            f"{e}\nThe workdir holds checkpoints of a different model. Use "
            "another --workdir, or set config.train.start_over=True (now "
            "False) to move them aside and start at step 0.") from None
      return _start_over(checkpointer, workdir, keep), 0, target
    try:
      state = checkpointer.restore(step, target)
    except Exception as e:  # pylint: disable=broad-except
      checkpointer = _set_aside(checkpointer, workdir, keep, step, e)
      continue
    return checkpointer, step, state


class NoReadableCheckpoint(config_lib.ConfigError):
  """Every checkpoint of the workdir was unreadable and has been set aside."""


def _check_nothing_unreadable(workdir: str, start_over: bool) -> None:
  """Refuses a silent start from step 0 when all checkpoints were unreadable.

  The checkpoints set aside stay in `checkpoints.unreadable/`, so a rerun
  after this refusal refuses again: only `train.start_over=True` starts over
  (and renames that folder, keeping its contents).

  Args:
    workdir: the run directory.
    start_over: `train.start_over`.

  Raises:
    NoReadableCheckpoint: checkpoints were set aside and none is left.
  """
  aside = workdir_path(workdir) / UNREADABLE_SUBDIR
  if not aside.exists() or not list(aside.iterdir()):
    return
  if start_over:
    # Acknowledged: renamed so that this run's own resumes are not refused.
    kept = f"{aside}-{int(time.time())}"
    if jax.process_index() == 0:
      aside.rename(kept)
    multihost_utils.sync_global_devices("simclr_jax.unreadable_acknowledged")
    logging.warning("config.train.start_over: no readable checkpoint; the "
                    "unreadable ones stay in %s; starting at step 0.", kept)
    return
  raise NoReadableCheckpoint(
      f"no readable checkpoint is left in {workdir}: the unreadable ones are "
      f"in {aside}; set config.train.start_over=True to start from step 0, "
      "or restore a good checkpoint into "
      f"{workdir_path(workdir) / CHECKPOINT_SUBDIR}")


def _set_aside(checkpointer: Checkpointer, workdir: str, keep: int,
               step: int, error: Exception) -> Checkpointer:
  """Moves unreadable checkpoint `step` out of the way; a fresh Checkpointer."""
  directory = checkpointer.directory
  checkpointer.close()
  aside = workdir_path(workdir) / UNREADABLE_SUBDIR / (
      f"{step}-{int(time.time())}")
  if jax.process_index() == 0:
    aside.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(directory, str(step)).rename(aside)
  multihost_utils.sync_global_devices(f"simclr_jax.set_aside.{step}")
  reason = " ".join(str(error).split())[:300]
  fresh = Checkpointer(workdir, keep)
  older = fresh.latest_step()
  logging.warning("checkpoint %s/%d is unreadable (%s: %s); moved it to %s; "
                  "%s.", directory, step, type(error).__name__, reason, aside,
                  f"trying the newest older checkpoint, step {older}" if older
                  else "no older checkpoint is left")
  return fresh


def _start_over(checkpointer: Checkpointer, workdir: str,
                keep: int) -> Checkpointer:
  """Moves a different model's checkpoint directory aside (deletes nothing)."""
  checkpointer.close()
  aside = f"{checkpointer.directory}.replaced-{int(time.time())}"
  if jax.process_index() == 0:
    epath.Path(checkpointer.directory).rename(aside)
  multihost_utils.sync_global_devices("simclr_jax.start_over")
  logging.warning("config.train.start_over: moved the checkpoints of a "
                  "different model to %s; starting at step 0.", aside)
  return Checkpointer(workdir, keep)
