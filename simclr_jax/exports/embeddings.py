"""Embeddings as CSV, the layout lightly's tools read.

  filename,embedding_0,...,embedding_{D-1}[,label]

one row per image, `filename` its path relative to the embedded folder
('/'-separated), the values as float32 written to round-trip exactly
(`repr` of each float32). `label` is the image's class sub-folder, present
when the folder is labelled: every image sits directly inside one of at
least two top-level folders (the rule of the folder data source).
"""

import csv
import os
from typing import List, Optional, Sequence

import numpy as np

from simclr_jax import config as config_lib

FILENAME = "filename"
LABEL = "label"


def header(dim: int, labelled: bool) -> List[str]:
  """The CSV header for embeddings of width `dim`."""
  return ([FILENAME] + [f"embedding_{i}" for i in range(dim)] +
          ([LABEL] if labelled else []))


def class_labels(paths: Sequence[str]) -> Optional[List[str]]:
  """The class sub-folder of every path, or None if the folder is unlabelled.

  Args:
    paths: '/'-separated paths relative to the embedded folder.

  Returns:
    Each path's top-level folder when all paths are exactly one level deep
    and there are at least two folders; None otherwise.
  """
  parts = [p.split("/") for p in paths]
  if not parts or any(len(p) != 2 for p in parts):
    return None
  labels = [p[0] for p in parts]
  return labels if len(set(labels)) >= 2 else None


def is_ours(path: str) -> bool:
  """Whether `path` is an embeddings CSV of this layout (safe to replace)."""
  with open(path, newline="") as f:
    first = next(csv.reader(f), [])
  if len(first) < 2 or first[0] != FILENAME:
    return False
  labelled = first[-1] == LABEL
  return first == header(len(first) - 1 - labelled, labelled)


def check_out(out: str, field: str = "--out") -> None:
  """Refuses an --out .csv that would replace anything but our embeddings."""
  if os.path.isdir(out):
    config_lib.fail(field, out, "is a directory; give a file name")
  if os.path.lexists(out):
    try:
      ours = not os.path.islink(out) and is_ours(out)
    except (OSError, UnicodeDecodeError, csv.Error):
      ours = False
    if not ours:
      config_lib.fail(field, out, "exists and is not an embeddings CSV of "
                      "simclr_jax; nothing was replaced. Choose another name")


def write_csv(out: str, paths: Sequence[str], embeddings: np.ndarray) -> None:
  """Writes the CSV atomically: a hidden file beside it, then a rename.

  Args:
    out: the .csv file.
    paths: relative paths, one per row of `embeddings`.
    embeddings: [N, D] array.
  """
  embeddings = np.asarray(embeddings, np.float32)
  labels = class_labels(paths)
  directory, base = os.path.split(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{base}.{os.getpid()}.partial.csv")
  try:
    with open(tmp, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header(embeddings.shape[1], labels is not None))
      for i, (path, row) in enumerate(zip(paths, embeddings)):
        writer.writerow([path] + [repr(float(v)) for v in row] +
                        ([labels[i]] if labels is not None else []))
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
