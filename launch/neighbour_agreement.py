"""How often an image's nearest neighbours share its label: embeddings vs a CSV.

  python launch/neighbour_agreement.py runs/mine/embeddings.npz \\
      runs/digit_images_labels.csv

Reads the `.npz` of `python -m simclr_jax.embed` and a `path,label` CSV (as
`launch/digits_images.py` writes beside its folder), and prints, for k = 1
and k = 10 (or `--k`), the share of (image, neighbour) pairs with the same
label over every image, the image itself left out; similarity is the cosine,
as in `python -m simclr_jax.neighbors`. Training never reads the labels: this
is how the own-images walk-through (docs/own_images.md) is scored.
"""

import argparse
import csv
import sys
from typing import Dict, Sequence

import numpy as np


def agreement(embeddings: np.ndarray, labels: np.ndarray,
              ks: Sequence[int]) -> Dict[int, float]:
  """Share of same-label pairs among each row's k nearest other rows.

  Args:
    embeddings: [n, d] vectors.
    labels: [n] labels.
    ks: neighbour counts, each below n.

  Returns:
    {k: fraction in [0, 1]}; ties in cosine go to the lower row index.
  """
  x = np.asarray(embeddings, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  cos = x @ x.T
  np.fill_diagonal(cos, -np.inf)  # an image is not its own neighbour
  order = np.argsort(-cos, axis=1, kind="stable")
  same = labels[order] == labels[:, None]
  return {k: float(same[:, :k].mean()) for k in ks}


def main(argv=None) -> int:
  """Prints the agreement for each k; 2 on a bad argument or file."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("embeddings", help="a .npz of python -m simclr_jax.embed")
  parser.add_argument("labels", help="a path,label CSV")
  parser.add_argument("--k", type=int, nargs="+", default=[1, 10],
                      help="neighbour counts (default 1 10)")
  args = parser.parse_args(argv)
  with np.load(args.embeddings) as f:
    paths = [str(p) for p in f["paths"]]
    vectors = f["embeddings"]
  with open(args.labels, newline="") as f:
    by_path = {row["path"]: row["label"] for row in csv.DictReader(f)}
  missing = [p for p in paths if p not in by_path]
  if missing:
    print(f"neighbour_agreement: {len(missing)} embedded paths have no label "
          f"in {args.labels}, e.g. {missing[0]}", file=sys.stderr)
    return 2
  if any(not 0 < k < len(paths) for k in args.k):
    print(f"neighbour_agreement: --k must lie in 1..{len(paths) - 1}, got "
          f"{args.k}", file=sys.stderr)
    return 2
  labels = np.asarray([by_path[p] for p in paths])
  for k, value in agreement(vectors, labels, args.k).items():
    print(f"{k} nearest: {100 * value:.1f}% share the image's label "
          f"({len(paths)} images)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
