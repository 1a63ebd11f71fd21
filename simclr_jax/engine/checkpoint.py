"""The one orbax wrapper: training checkpoints, resume, and the export layout.

Training checkpoints live in `<workdir>/checkpoints/<step>/` (orbax
CheckpointManager, async, atomic: a step directory appears only once it is
complete, so a kill during a save leaves the previous checkpoint readable).

An export is a self-contained encoder artifact:
  <export>/meta.json      model config, num_classes, image convention, the
                          evaluation preprocessing, extras
  <export>/variables/     orbax StandardCheckpointer of {'params', 'batch_stats'}
meta.json also lists every file and folder the export wrote
(`export_files`). It is written to a hidden work folder beside it and renamed
into place, so an existing export is never left half-overwritten; replacing
one removes only what it lists. A path that holds anything else, at any depth
(a workdir, a user's files, a user's file inside an export's sub-folder), is
refused, never deleted.

A checkpoint that cannot be read is set aside in
`<workdir>/checkpoints.unreadable/` and the run resumes from an older one;
only a readable checkpoint of other shapes counts as a different model.
"""

import json
import os
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from absl import logging
from jax.experimental import multihost_utils

from simclr_jax import config as config_lib
from simclr_jax.engine import export_files

EXPORT_FORMAT = export_files.EXPORT_FORMAT
# The official evaluation centre crop above 32 px (`data_util.CROP_PROPORTION`).
OFFICIAL_CROP = 0.875
CHECKPOINT_SUBDIR = "checkpoints"


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


# The rules of an export folder (what is ours, what may be replaced).
is_export = export_files.is_export
check_export_target = export_files.check_target
_PARTIAL = export_files.PARTIAL
_REPLACED = export_files.REPLACED
_PARTIAL_MARKER = export_files.PARTIAL_MARKER


def save_export(out_dir: str, variables: Dict[str, Any],
                model_config: Dict[str, Any], num_classes: int,
                image_size: int, extra: Optional[Dict[str, Any]] = None,
                field: str = "--out", crop_proportion: float = 1.0) -> None:
  """Writes an encoder export (see module docstring); atomic on one filesystem.

  meta.json lists every file and folder the export wrote, so that replacing
  it later removes exactly those.

  Args:
    out_dir: the export directory to create or replace.
    variables: {'params': ..., 'batch_stats': ...} (arrays of any kind).
    model_config: the model config as a plain JSON-able dict.
    num_classes: classes of the supervised head in `variables` (0 = none).
    image_size: input side the encoder was trained with.
    extra: further JSON-able metadata (e.g. source checkpoint and step).
    field: the flag or config field that named `out_dir`, for messages.
    crop_proportion: the evaluation centre crop the encoder expects (0.875
      for the official ImageNet models), recorded so that embedding and
      evaluation need no flag for it.

  Raises:
    ConfigError: `out_dir` exists and is not an export made by simclr_jax
      holding only what it wrote (see `check_export_target`); nothing is
      written or deleted then.
  """
  out_dir = os.path.abspath(out_dir)
  check_export_target(out_dir, field)
  host_vars = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
  meta = {
      "format": EXPORT_FORMAT,
      "model": dict(model_config),
      "num_classes": int(num_classes),
      "image_size": int(image_size),
      "image_range": [0.0, 1.0],
      "image_layout": "NHWC float32 RGB, no mean/std normalisation",
      "preprocessing": preprocessing_meta(image_size, crop_proportion),
      "extra": dict(extra or {}),
  }
  parent, base = os.path.split(out_dir)
  # Work folders of our own, hidden beside the export: written in full
  # first, then swapped in, so a reader never sees half an export.
  tmp = os.path.join(parent, f".{base}{_PARTIAL}")
  old = os.path.join(parent, f".{base}{_REPLACED}")
  if jax.process_index() == 0:
    for path in (tmp, old):
      export_files.clear_leftover(path)
    os.makedirs(tmp)
    open(os.path.join(tmp, _PARTIAL_MARKER), "w").close()
  multihost_utils.sync_global_devices("simclr_jax.export.start")
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, "variables"), host_vars)
  ckptr.wait_until_finished()
  ckptr.close()
  multihost_utils.sync_global_devices("simclr_jax.export.saved")
  if jax.process_index() == 0:
    meta[export_files.FILES_KEY] = [
        e for e in export_files.list_entries(tmp) if e != _PARTIAL_MARKER]
    with open(os.path.join(tmp, export_files.META), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.remove(os.path.join(tmp, _PARTIAL_MARKER))
    if os.path.lexists(out_dir):
      os.rename(out_dir, old)  # an export of ours (checked above) or empty
    os.rename(tmp, out_dir)
    if os.path.lexists(old):
      kept = export_files.remove_export(old, export_files.read_meta(old))
      if kept:  # put there while this export was being written
        aside = f"{out_dir}.kept-{int(time.time())}"
        os.rename(old, aside)
        logging.warning("%s held %s, which the replaced export did not "
                        "write; moved to %s", out_dir,
                        export_files.describe_foreign(kept), aside)
  multihost_utils.sync_global_devices("simclr_jax.export.done")


def preprocessing_meta(image_size: int, crop_proportion: float
                       ) -> Dict[str, Any]:
  """The evaluation preprocessing an export records (see `preprocessing`)."""
  return {"image_size": int(image_size),
          "crop_proportion": float(crop_proportion),
          "crop": "central square, crop_proportion x the shorter side",
          "resize": "bicubic (half-pixel centres, no antialiasing)",
          "range": [0.0, 1.0]}


def preprocessing(meta: Dict[str, Any]) -> Dict[str, Any]:
  """The evaluation preprocessing of an export, also of older exports.

  Exports written before the preprocessing was recorded get the official
  rule: the 0.875 centre crop above 32 px for converted official
  checkpoints, the whole shorter side otherwise.

  Args:
    meta: the export's meta.json.

  Returns:
    {'image_size', 'crop_proportion', ...} as `preprocessing_meta`.
  """
  if "preprocessing" in meta:
    return dict(meta["preprocessing"])
  size = int(meta["image_size"])
  official = "official" in str(meta.get("extra", {}).get("source", ""))
  return preprocessing_meta(size, OFFICIAL_CROP if official and size > 32
                            else 1.0)


def read_export_meta(path: str) -> Dict[str, Any]:
  """Reads an export's meta.json; ValueError if `path` is not an export."""
  meta_path = os.path.join(path, "meta.json")
  if not os.path.isfile(meta_path):
    raise ValueError(f"--export={path!r} is not a simclr_jax export "
                     "(no meta.json); create one with python -m simclr_jax.export")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != EXPORT_FORMAT:
    raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not "
                     f"{EXPORT_FORMAT!r}")
  return meta


def load_export(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Loads an export as host NumPy arrays.

  Args:
    path: the export directory.

  Returns:
    (variables, meta): {'params', 'batch_stats'} as NumPy arrays, and the
    parsed meta.json (keys 'model', 'num_classes', 'image_size', 'extra').
  """
  meta = read_export_meta(path)
  ckptr = ocp.StandardCheckpointer()
  var_dir = os.path.join(os.path.abspath(path), "variables")
  stored = ckptr.metadata(var_dir)
  tree = getattr(stored, "item_metadata", stored)
  tree = getattr(tree, "tree", tree)
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree,
                        is_leaf=lambda x: hasattr(x, "shape"))
  variables = ckptr.restore(var_dir, target)
  ckptr.close()
  return variables, meta


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
