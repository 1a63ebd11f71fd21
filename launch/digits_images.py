"""Writes scikit-learn's 1,797 handwritten digits as an unlabelled image folder.

  python launch/digits_images.py runs/digit_images

A stand-in for "a folder of your own images" that needs no download: PNG
files of 32 x 32 pixels, `0000.png` to `1796.png`, in one flat folder (one
level of sub-folders would read as classes). The
label of each file goes beside the folder in `<OUT_DIR>_labels.csv`, for
checking neighbours by eye; training never reads it.
"""

import csv
import os
import sys

import numpy as np
from PIL import Image
from sklearn import datasets

SIDE = 32  # pixels; the 8 x 8 originals upscaled 4x (nearest)


def main(out: str) -> None:
  """Writes the PNGs under `out` and `labels.csv` beside it."""
  digits = datasets.load_digits()
  images = (digits.images / digits.images.max() * 255).astype(np.uint8)
  scale = SIDE // images.shape[1]
  rows = []
  for i, (image, label) in enumerate(zip(images, digits.target)):
    rel = f"{i:04d}.png"
    path = os.path.join(out, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    big = np.kron(image, np.ones((scale, scale), np.uint8))
    Image.fromarray(big, mode="L").convert("RGB").save(path)
    rows.append((rel, int(label)))
  with open(os.path.join(os.path.dirname(os.path.abspath(out)),
                         os.path.basename(os.path.normpath(out)) +
                         "_labels.csv"), "w", newline="") as f:
    csv.writer(f).writerows([("path", "label")] + rows)
  print(f"wrote {len(rows)} images under {out}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python launch/digits_images.py OUT_DIR")
  main(sys.argv[1])
