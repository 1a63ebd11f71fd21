"""The export format: what an encoder artifact is, how it is written and read.

An export is a self-contained encoder artifact:
  <export>/meta.json      model config, num_classes, image convention, the
                          evaluation preprocessing, extras
  <export>/variables/     orbax StandardCheckpointer of {'params', 'batch_stats'}
meta.json also lists every file and folder the export wrote
(`exports.files`). It is written to a hidden work folder beside it and
renamed into place, so an existing export is never left half-overwritten;
replacing one removes only what it lists. A path that holds anything else, at
any depth (a workdir, a user's files, a user's file inside an export's
sub-folder), is refused, never deleted.
"""

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from simclr_jax.exports import files as export_files

EXPORT_FORMAT = export_files.EXPORT_FORMAT
# The official evaluation centre crop above 32 px (`data_util.CROP_PROPORTION`).
OFFICIAL_CROP = 0.875

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


def exporter(out_dir: str, model_config: Dict[str, Any], num_classes: int,
             image_size: int, crop_proportion: float,
             field: str = "<workdir>/export"
             ) -> Callable[[Dict[str, Any], Dict[str, Any]], None]:
  """Checks now that `out_dir` may be written; returns what writes it later.

  For a mode that leaves an export at the end of its run: a path holding
  anything not ours fails before the first step, not after the last.

  Returns:
    write(variables, extra): `save_export` of the variables (any arrays)
    with the given model, classes and preprocessing, and `extra` metadata.
  """
  check_export_target(out_dir, field)

  def write(variables: Dict[str, Any], extra: Dict[str, Any]) -> None:
    save_export(out_dir, variables, model_config, num_classes,
                image_size, extra=extra, field=field,
                crop_proportion=crop_proportion)

  return write


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
