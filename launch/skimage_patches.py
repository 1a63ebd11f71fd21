"""Writes a labelled image folder of patches of scikit-image's bundled images.

  pip install scikit-image   # or: pip install -e '.[study]'
  python launch/skimage_patches.py runs/skimage_patches

A second real image set that needs no download, for the CPU study
(`python -m simclr_jax.tools.cpu_study`): 32 x 32 grey patches of ten of the
photographs and textures that ship inside the scikit-image wheel, one class
per source image (brick, grass, gravel, camera, moon, coins, chelsea, coffee,
astronaut, rocket). Greyscale, so colour alone does not give the class away.
Train and test patches come from disjoint columns of each image (the right
fifth is test), so no test patch overlaps a training one. Writes
OUT/train/<class>/NNNN.png and OUT/test/<class>/NNNN.png, the layout
`configs/folder.py` reads as labelled.
"""

import os
import sys

import numpy as np
from PIL import Image

SIDE = 32  # patch side in pixels
# One class per bundled image (the `skimage.data` function names).
SOURCES = ("brick", "grass", "gravel", "camera", "moon", "coins", "chelsea",
           "coffee", "astronaut", "rocket")
TEST_COLUMNS = 0.2  # the right fifth of each image's patch columns is test
PER_CLASS = {"train": 80, "test": 16}  # patches kept per class (seeded)
SEED = 0


def _grey(image: np.ndarray) -> np.ndarray:
  """uint8 greyscale of a grey or RGB(A) image (ITU-R 601 luma)."""
  if image.ndim == 2:
    return image.astype(np.uint8)
  rgb = image[..., :3].astype(np.float64)
  return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


def patches(image: np.ndarray):
  """Non-overlapping SIDE x SIDE patches as {'train': [...], 'test': [...]}."""
  rows, cols = image.shape[0] // SIDE, image.shape[1] // SIDE
  first_test = cols - max(1, int(round(cols * TEST_COLUMNS)))
  out = {"train": [], "test": []}
  for r in range(rows):
    for c in range(cols):
      split = "test" if c >= first_test else "train"
      out[split].append(image[r * SIDE:(r + 1) * SIDE,
                              c * SIDE:(c + 1) * SIDE])
  return out


def main(out: str) -> None:
  """Writes the patches under `out` and prints how many."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(SEED)
  counts = {"train": 0, "test": 0}
  for name in SOURCES:
    split_patches = patches(_grey(getattr(data, name)()))
    for split, keep in PER_CLASS.items():
      got = split_patches[split]
      if len(got) < keep:
        raise SystemExit(f"{name}: only {len(got)} {split} patches")
      for i, j in enumerate(sorted(rng.choice(len(got), keep, replace=False))):
        path = os.path.join(out, split, name, f"{i:04d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(got[j], mode="L").save(path)
        counts[split] += 1
  print(f"wrote {counts['train']} train and {counts['test']} test patches of "
        f"{len(SOURCES)} classes under {out}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python launch/skimage_patches.py OUT_DIR")
  main(sys.argv[1])
