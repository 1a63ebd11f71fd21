"""The one orbax wrapper: training checkpoints, resume, and the export layout.

Training checkpoints live in `<workdir>/checkpoints/<step>/` (orbax
CheckpointManager, async, atomic: a step directory appears only once it is
complete, so a kill during a save leaves the previous checkpoint readable).

An export is a self-contained encoder artifact:
  <export>/meta.json      model config, num_classes, image convention, extras
  <export>/variables/     orbax StandardCheckpointer of {'params', 'batch_stats'}
It is written to a temporary sibling directory and renamed into place, so an
existing export is never left half-overwritten.
"""

import json
import os
import shutil
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from absl import logging
from jax.experimental import multihost_utils

EXPORT_FORMAT = "simclr_jax.export/1"
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


def save_export(out_dir: str, variables: Dict[str, Any],
                model_config: Dict[str, Any], num_classes: int,
                image_size: int, extra: Optional[Dict[str, Any]] = None
                ) -> None:
  """Writes an encoder export (see module docstring); atomic on one filesystem.

  Args:
    out_dir: the export directory to create or replace.
    variables: {'params': ..., 'batch_stats': ...} (arrays of any kind).
    model_config: the model config as a plain JSON-able dict.
    num_classes: classes of the supervised head in `variables` (0 = none).
    image_size: input side the encoder was trained with.
    extra: further JSON-able metadata (e.g. source checkpoint and step).
  """
  out_dir = os.path.abspath(out_dir)
  host_vars = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), variables)
  meta = {
      "format": EXPORT_FORMAT,
      "model": dict(model_config),
      "num_classes": int(num_classes),
      "image_size": int(image_size),
      "image_range": [0.0, 1.0],
      "image_layout": "NHWC float32 RGB, no mean/std normalisation",
      "extra": dict(extra or {}),
  }
  tmp = out_dir + ".tmp"
  if jax.process_index() == 0:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(tmp, "variables"), host_vars)
  ckptr.wait_until_finished()
  ckptr.close()
  if jax.process_index() == 0:
    old = out_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
      os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


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


def open_for_resume(workdir: str, keep: int, target: Any,
                    start_over: bool = False) -> Tuple[Checkpointer, int]:
  """Opens the workdir's checkpoints and checks that the newest fits `target`.

  Args:
    workdir: the run directory.
    keep: number of most recent checkpoints kept.
    target: pytree of arrays (or shape structs) of the configured model.
    start_over: when the newest checkpoint does not fit `target`, move the
      checkpoint directory aside (nothing is deleted) and start at step 0,
      instead of refusing. Checkpoints that fit are always resumed, so a
      requeued job never loses its progress.

  Returns:
    (checkpointer, step to resume from; 0 for a fresh start).

  Raises:
    ValueError: the newest checkpoint does not fit and `start_over` is off;
      the message lists the mismatched leaves.
  """
  checkpointer = Checkpointer(workdir, keep)
  step = checkpointer.latest_step()
  if not step:
    return checkpointer, 0
  try:
    check_shapes(checkpointer.item_shapes(step), target,
                 f"checkpoint {checkpointer.directory}/{step}")
  except ValueError as e:
    if not start_over:
      raise ValueError(
          f"{e}\nThe workdir holds checkpoints of a different model. Use "
          "another --workdir, or set config.train.start_over=True (now "
          "False) to move them aside and start at step 0.") from None
    checkpointer.close()
    aside = f"{checkpointer.directory}.replaced-{int(time.time())}"
    if jax.process_index() == 0:
      epath.Path(checkpointer.directory).rename(aside)
    multihost_utils.sync_global_devices("simclr_jax.start_over")
    logging.warning("config.train.start_over: moved the checkpoints of a "
                    "different model to %s; starting at step 0.", aside)
    return Checkpointer(workdir, keep), 0
  return checkpointer, step
