"""Image folders as a dataset: labelled (class sub-folders) or unlabelled.

Layouts (`data.data_dir` = ROOT):

  labelled     ROOT/<split>/<class>/<image>       one level of class folders
  unlabelled   ROOT/<split>/**/<image>            any tree of images
               ROOT/**/<image>                    (no <split> folder at all)

The training images are ROOT/<data.train_split> when that folder exists and
ROOT itself otherwise. `data.folder_labels='auto'` calls the images labelled
when there are no images at the top of that folder and every image sits
directly in one of at least two class folders; anything else is an
unlabelled tree (every image under it, recursively). 'subfolders' or 'none'
forces either reading.

The evaluation images are ROOT/<data.eval_split> when that folder exists.
Otherwise a seeded fraction `data.holdout_fraction` of the training images
(`data.holdout_seed`) is held out as the eval split and not trained on; with
a fraction of 0 there is no eval split and evaluation is skipped.

Examples of a split are ordered by (class, file name) for labelled folders
and by relative path for unlabelled ones. Unlabelled examples carry label 0.
"""

import dataclasses
import functools
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from simclr_jax.data.tf_host import tf
from absl import logging

from simclr_jax import config as config_lib
from simclr_jax.data import imagefiles
from simclr_jax.data.imagefiles import IMAGE_EXTENSIONS
from simclr_jax.data.imagefiles import is_image_name

FOLDER_LABELS = ("auto", "subfolders", "none")
# Eval split kinds: its own folder, held out of train, or none.
EVAL_FOLDER, EVAL_HOLDOUT, EVAL_NONE = "folder", "holdout", "none"


@dataclasses.dataclass(frozen=True)
class FolderDataset:
  """The resolved layout of an image folder.

  Attributes:
    labelled: whether class sub-folders give labels.
    classes: class folder names (sorted; empty when unlabelled).
    train_root: the folder the training images come from.
    eval_kind: EVAL_FOLDER, EVAL_HOLDOUT or EVAL_NONE.
    splits: split name -> (paths, int32 labels), before skipping corrupt files.
  """
  labelled: bool
  classes: Tuple[str, ...]
  train_root: str
  eval_kind: str
  splits: Dict[str, Tuple[Tuple[str, ...], np.ndarray]]


def _fail(field: str, value: Any, allowed: str) -> None:
  config_lib.fail(field, value, allowed)


def check_folder_config(data_cfg: Any) -> None:
  """Validates the folder-only fields (no reading)."""
  labels = data_cfg.get("folder_labels", "auto")
  if labels not in FOLDER_LABELS:
    _fail("data.folder_labels", labels, f"allowed {FOLDER_LABELS}")
  fraction = float(data_cfg.get("holdout_fraction", 0.0))
  if not 0.0 <= fraction < 1.0:
    _fail("data.holdout_fraction", fraction, "allowed [0, 1)")


def _list_dirs(path: str) -> List[str]:
  return sorted(d.rstrip("/") for d in tf.io.gfile.listdir(path)
                if not d.startswith(".")
                and tf.io.gfile.isdir(os.path.join(path, d)))


def _walk_images(root: str, exclude: Optional[str] = None) -> List[str]:
  """Image paths under `root` (recursive), sorted by relative path."""
  found = []
  for dirpath, dirnames, filenames in tf.io.gfile.walk(root):
    here = os.path.normpath(dirpath)
    if exclude and (here == exclude or here.startswith(exclude + os.sep)):
      continue
    if any(part.startswith(".") for part in
           os.path.relpath(dirpath, root).split(os.sep) if part != "."):
      continue
    del dirnames
    found += [os.path.join(dirpath, f) for f in filenames if is_image_name(f)]
  return sorted(found, key=lambda p: os.path.relpath(p, root))


def _not_images(root: str) -> List[str]:
  """Visible files under `root` (recursive) that are not read as images."""
  others = []
  for dirpath, _, filenames in tf.io.gfile.walk(root):
    rel = os.path.relpath(dirpath, root)
    if any(part.startswith(".") for part in rel.split(os.sep) if part != "."):
      continue
    others += [f if rel == "." else os.path.join(rel, f) for f in filenames
               if not f.startswith(".") and not is_image_name(f)]
  return others


def _looks_labelled(root: str) -> bool:
  """Images only directly inside at least two top-level folders."""
  if any(is_image_name(f) for f in tf.io.gfile.listdir(root)):
    return False
  holding = 0
  for name in _list_dirs(root):
    class_dir = os.path.join(root, name)
    if any(_walk_images(os.path.join(class_dir, d))
           for d in _list_dirs(class_dir)):
      return False  # images deeper than one class level: a tree
    holding += any(is_image_name(f) for f in tf.io.gfile.listdir(class_dir))
  return holding >= 2


def _labelled_split(root: str, split_dir: str, classes: List[str],
                    split: str) -> Tuple[List[str], List[int]]:
  paths, labels = [], []
  for name in _list_dirs(split_dir):
    if name not in classes:
      _fail("split", split, f"class directory {name!r} is not one of the "
            f"classes of the training images ({classes})")
    class_dir = os.path.join(split_dir, name)
    files = sorted(f for f in tf.io.gfile.listdir(class_dir)
                   if is_image_name(f))
    if not files:
      _fail("data.data_dir", root, f"class directory {class_dir} holds no "
            f"images (files ending in {IMAGE_EXTENSIONS}); remove it or add "
            "images")
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [classes.index(name)] * len(files)
  if not paths:
    _fail("split", split, f"no images in {split_dir}: expected "
          f"<class>/<image> files ending in {IMAGE_EXTENSIONS}")
  return paths, labels


@functools.lru_cache(maxsize=16)
def _resolve(root: str, train_split: str, eval_split: str, labels_mode: str,
             fraction: float, seed: int) -> FolderDataset:
  train_dir = os.path.join(root, train_split)
  train_root = train_dir if tf.io.gfile.isdir(train_dir) else root
  eval_dir = os.path.join(root, eval_split)
  has_eval_dir = bool(eval_split) and tf.io.gfile.isdir(eval_dir)
  if labels_mode == "auto":
    labelled = _looks_labelled(train_root)
  else:
    labelled = labels_mode == "subfolders"
  splits = {}
  if labelled:
    classes = _list_dirs(train_root)
    if not classes:
      _fail("data.train_split", train_split,
            f"no class sub-directories in {train_root} "
            "(data.folder_labels='subfolders')")
    paths, labs = _labelled_split(root, train_root, classes, train_split)
    if has_eval_dir:
      splits[eval_split] = _labelled_split(root, eval_dir, classes, eval_split)
  else:
    classes = []
    # A tree at ROOT must not also train on the eval folder inside it.
    exclude = os.path.normpath(eval_dir) if (
        has_eval_dir and train_root == root) else None
    paths = _walk_images(train_root, exclude)
    if not paths:
      _fail("data.train_split", train_split,
            f"no images in {train_root}: no class sub-directories in "
            f"{train_root} and no files ending in {IMAGE_EXTENSIONS} under it")
    labs = [0] * len(paths)
    if has_eval_dir:
      eval_paths = _walk_images(eval_dir)
      if not eval_paths:
        _fail("split", eval_split, f"no images in {eval_dir}")
      splits[eval_split] = (eval_paths, [0] * len(eval_paths))
  labs = np.asarray(labs, np.int32)
  if has_eval_dir:
    eval_kind = EVAL_FOLDER
  elif fraction > 0:
    eval_kind = EVAL_HOLDOUT
    # At least one image on each side: the smallest folder still evaluates.
    n_hold = min(max(1, int(round(fraction * len(paths)))), len(paths) - 1)
    if n_hold < 1:
      _fail("data.holdout_fraction", fraction, f"{train_root} holds one "
            "image; nothing can be held out (set 0 to skip evaluation)")
    held = np.zeros(len(paths), bool)
    held[np.random.default_rng(seed).permutation(len(paths))[:n_hold]] = True
    splits[eval_split] = ([p for p, h in zip(paths, held) if h], labs[held])
    paths, labs = [p for p, h in zip(paths, held) if not h], labs[~held]
  else:
    eval_kind = EVAL_NONE
  splits[train_split] = (paths, labs)
  splits = {k: (tuple(p), np.asarray(y, np.int32)) for k, (p, y)
            in splits.items()}
  return FolderDataset(labelled, tuple(classes), train_root, eval_kind, splits)


_LOGGED = set()


def resolve(data_cfg: Any) -> FolderDataset:
  """The folder's layout, splits and labels (listed once per process).

  Args:
    data_cfg: the `config.data` ConfigDict (data_dir, train_split,
      eval_split, folder_labels, holdout_fraction, holdout_seed).

  Returns:
    The `FolderDataset`; logs once what was detected.
  """
  check_folder_config(data_cfg)
  key = (os.path.normpath(str(data_cfg.data_dir)), str(data_cfg.train_split),
         str(data_cfg.eval_split), str(data_cfg.get("folder_labels", "auto")),
         float(data_cfg.get("holdout_fraction", 0.0)),
         int(data_cfg.get("holdout_seed", 0)))
  folder = _resolve(*key)
  if key not in _LOGGED:
    _LOGGED.add(key)
    n_train = len(folder.splits[key[1]][0])
    kind = (f"labelled: {len(folder.classes)} class sub-folders"
            if folder.labelled else "unlabelled: no class sub-folders")
    how = "detected" if key[3] == "auto" else f"data.folder_labels={key[3]!r}"
    logging.info("Image folder %s: %s (%s), %d training images", folder.train_root,
                 kind, how, n_train)
    imagefiles.log_not_images(key[0], _not_images(key[0]))
    if folder.eval_kind == EVAL_HOLDOUT:
      logging.info("No %r folder: %d images (data.holdout_fraction=%s, seed "
                   "%d) held out of training as the eval split", key[2],
                   len(folder.splits[key[2]][0]), key[4], key[5])
    elif folder.eval_kind == EVAL_NONE:
      logging.info("No %r folder and data.holdout_fraction=0: evaluation "
                   "skipped", key[2])
  return folder


def split_files(data_cfg: Any, split: str) -> Tuple[List[str], np.ndarray]:
  """Image paths and labels of a split, in canonical order.

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: data.train_split or data.eval_split.

  Returns:
    (paths, int32 labels), before any corrupt file is skipped.
  """
  folder = resolve(data_cfg)
  if split not in folder.splits:
    if split == data_cfg.eval_split and folder.eval_kind == EVAL_NONE:
      _fail("data.eval_split", split, f"no folder {split!r} in "
            f"{data_cfg.data_dir} and data.holdout_fraction=0, so there is no "
            "eval split; set data.holdout_fraction > 0 or add the folder")
    _fail("split", split, f"no directory {os.path.join(data_cfg.data_dir, split)}")
  paths, labels = folder.splits[split]
  return list(paths), labels
