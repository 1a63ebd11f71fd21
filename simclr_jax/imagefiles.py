"""Image files on disk, without TensorFlow: which files count, in what order.

The folder data source (through `tf.io.gfile`, so that it also reads cloud
buckets), the embed command and the encoder API share one rule: every file
whose name ends in one of `IMAGE_EXTENSIONS` (any case) anywhere under a root,
hidden files and folders (names starting with '.') left out, ordered by the
path relative to the root.
"""

import os
from typing import List

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def is_image_name(name: str) -> bool:
  """True for a visible file name with an image extension."""
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str) -> List[str]:
  """Every image file under `root`, recursively, as sorted relative paths.

  Args:
    root: a local directory.

  Returns:
    Relative paths with '/' separators, sorted; hidden entries skipped.

  Raises:
    FileNotFoundError: `root` is not a directory.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root!r} is not a directory")
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    rel = os.path.relpath(dirpath, root)
    for name in filenames:
      if is_image_name(name):
        path = name if rel == "." else os.path.join(rel, name)
        found.append(path.replace(os.sep, "/"))
  return sorted(found)


def read_image(path: str) -> np.ndarray:
  """Decodes an image file to RGB.

  Args:
    path: a JPEG, PNG, WebP or BMP file (any mode: grey, palette, alpha).

  Returns:
    uint8 [H, W, 3].

  Raises:
    OSError: the file cannot be read or decoded (e.g. corrupt or truncated).
  """
  # Imported here: Pillow is needed only where files are decoded.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image.load()  # decodes now, so a truncated file fails here
    return np.asarray(image.convert("RGB"), np.uint8)
