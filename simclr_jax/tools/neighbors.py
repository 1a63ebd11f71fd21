"""The nearest images of a query, as a picture and a CSV.

  python -m simclr_jax.neighbors --embeddings=runs/mine/embeddings.npz \\
      --query=cats/001.jpg --k=8 --out=runs/mine/neighbours.png

--query is an index into the embeddings file, a path relative to its
image folder, or any image file (embedded on the spot with the export the
file records, same layer and preprocessing). Similarity is the cosine of the
embeddings; an image of the file is its own nearest neighbour (cosine 1).
Writes the PNG grid (the query framed in red, then the k nearest with rank
and cosine) and, beside it, the same list as CSV (rank, path, cosine).
An existing PNG or CSV there is replaced only if this command wrote it
(the PNG carries a `simclr_jax` text chunk); both are written atomically.
"""

import csv
import io
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from absl import app
from absl import flags

from simclr_jax import config as config_lib
from simclr_jax.data import imagefiles
from simclr_jax.engine import logs
from simclr_jax.tools import outputs


NEIGHBOURS_FORMAT = "simclr_jax.neighbors/1"  # a text chunk of the PNG
CSV_HEADER = ("rank", "path", "cosine")


def csv_path_of(out: str) -> str:
  """The CSV written beside the PNG `out`."""
  return os.path.splitext(out)[0] + ".csv"


def _write_png(f, grid: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import PngImagePlugin  # pylint: disable=g-import-not-at-top
  info = PngImagePlugin.PngInfo()
  info.add_text("simclr_jax", NEIGHBOURS_FORMAT)
  Image.fromarray(np.asarray(grid, np.uint8)).save(f, format="PNG",
                                                    pnginfo=info)


def png_problem(path: str) -> Optional[str]:
  """Why `path` is not a complete neighbours picture of ours, or None."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
      return "not a PNG image"
  try:
    with Image.open(path) as image:
      marker = image.info.get("simclr_jax")
      image.load()  # reads every pixel: a truncated file fails here
  except Exception as e:  # pylint: disable=broad-except
    return f"a damaged PNG ({type(e).__name__})"
  if marker != NEIGHBOURS_FORMAT:
    return "a PNG without the simclr_jax neighbours marker"
  return None


def csv_problem(path: str) -> Optional[str]:
  """Why `path` is not a complete neighbours CSV of ours, or None."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      table = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    return f"not a CSV ({type(e).__name__})"
  if not table or tuple(table[0]) != CSV_HEADER:
    return "its first line is not rank,path,cosine"
  for line, row in enumerate(table[1:], start=2):
    ok = len(row) == 3
    try:
      ok = ok and int(row[0]) >= 1 and float(row[2]) <= 1.0 + 1e-6
    except ValueError:
      ok = False
    if not ok:
      return f"line {line} is not rank,path,cosine"
  return None


def check_outputs(out: str) -> None:
  """Refuses --out (and its CSV) unless absent or written by this command."""
  if not out.endswith(".png"):
    config_lib.fail("--out", out, "must end in .png")
  outputs.check_replaceable("--out", out, "a neighbours picture", png_problem)
  outputs.check_replaceable("--out", csv_path_of(out),
                            "a neighbours table", csv_problem)


def load_embeddings(path: str) -> Dict[str, Any]:
  """An embeddings file of `python -m simclr_jax.embed` (no pickle)."""
  if not os.path.isfile(path):
    config_lib.fail("--embeddings", path, "no such file")
  try:
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError) as e:
    config_lib.fail("--embeddings", path, f"not a readable .npz ({e})")


def query_vector(emb: Dict[str, Any], query: str
                 ) -> Tuple[np.ndarray, str, str]:
  """The query's embedding, its label for the grid and its image file.

  Args:
    emb: the loaded embeddings file.
    query: an index, a relative path of the file, or an image path.

  Returns:
    (vector [D], caption, image path).
  """
  paths, root = [str(p) for p in emb["paths"]], str(emb["images_root"])
  if query.lstrip("-").isdigit():
    i = int(query)
    if not 0 <= i < len(paths):
      config_lib.fail("--query", query, f"an index must be in [0, "
                      f"{len(paths)})")
    return emb["embeddings"][i], paths[i], os.path.join(root, paths[i])
  rel = query.replace(os.sep, "/")
  if rel in paths:
    i = paths.index(rel)
    return emb["embeddings"][i], rel, os.path.join(root, rel)
  if not os.path.isfile(query):
    config_lib.fail("--query", query, "is neither an index, a path of the "
                    "embeddings file, nor an image file")
  from simclr_jax import api  # pylint: disable=g-import-not-at-top
  encoder = api.load_encoder(str(emb["export"]))
  image = imagefiles.read_image(query)
  vector = encoder.embed([image], layer=str(emb["layer"]))[0]
  return vector, os.path.basename(query), query


def nearest(embeddings: np.ndarray, vector: np.ndarray, k: int
            ) -> Tuple[np.ndarray, np.ndarray]:
  """Indices and cosines of the k rows most similar to `vector`.

  Args:
    embeddings: float [N, D].
    vector: float [D].
    k: how many (clipped to N).

  Returns:
    (int indices [k], float cosines [k]), most similar first; ties keep the
    file order.
  """
  e = np.asarray(embeddings, np.float64)
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  v = np.asarray(vector, np.float64)
  v = v / max(np.linalg.norm(v), 1e-12)
  cos = e @ v
  order = np.argsort(-cos, kind="stable")[:min(k, len(cos))]
  return order, cos[order]


def write_neighbours(emb: Dict[str, Any], query: str, k: int, out: str,
                     tile_px: int = 160, columns: int = 5
                     ) -> List[Tuple[int, str, float]]:
  """Writes the PNG grid `out` and the CSV beside it.

  Args:
    emb: the loaded embeddings file.
    query: see `query_vector`.
    k: neighbours shown.
    out: the PNG to write; the CSV gets the same name ending in .csv.
    tile_px: side of one tile in the grid.
    columns: tiles per row.

  Returns:
    [(rank, relative path, cosine)] of the neighbours, nearest first.
  """
  from simclr_jax.viz import plots  # pylint: disable=g-import-not-at-top
  check_outputs(out)
  vector, caption, query_file = query_vector(emb, query)
  idx, cos = nearest(emb["embeddings"], vector, k)
  paths, root = [str(p) for p in emb["paths"]], str(emb["images_root"])
  rows = [(r + 1, paths[i], float(c)) for r, (i, c) in enumerate(zip(idx,
                                                                      cos))]
  images = [imagefiles.read_image(os.path.join(root, p)) for _, p, _ in rows]
  grid = plots.plot_neighbours(
      imagefiles.read_image(query_file), images, f"query: {caption}"[:40],
      [f"#{r} cos {c:.3f}" for r, _, c in rows], tile_px, columns)
  csv_path = csv_path_of(out)
  table = io.StringIO(newline="")
  writer = csv.writer(table)
  writer.writerow(CSV_HEADER)
  writer.writerows((r, p, f"{c:.6f}") for r, p, c in rows)
  outputs.write_atomic(out, lambda f: _write_png(f, grid),
                       check=lambda: check_outputs(out))
  outputs.write_atomic(csv_path, lambda f: f.write(table.getvalue().encode()),
                       check=lambda: check_outputs(out))
  return rows


def main(argv) -> None:
  """Writes the neighbours of --query in --embeddings to --out (+ .csv)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for name in ("k", "tile_px", "columns"):
    if fv[name].value < 1:
      config_lib.fail(f"--{name}", fv[name].value, "must be >= 1")
  check_outputs(fv.out)  # before any work
  emb = load_embeddings(fv.embeddings)
  rows = write_neighbours(emb, fv.query, fv.k, fv.out, fv.tile_px,
                          fv.columns)
  for rank, path, cos in rows:
    print(f"{rank:3d}  {cos:.4f}  {path}")
  print(f"wrote {fv.out} and {csv_path_of(fv.out)}")


def cli() -> None:
  """The command line: python -m simclr_jax.neighbors."""
  flags.DEFINE_string("embeddings", None, "a .npz of python -m simclr_jax.embed")
  flags.DEFINE_string("query", None, "an index, a relative path of the file, "
                      "or an image file")
  flags.DEFINE_integer("k", 8, "neighbours shown (the query itself included "
                       "when it is in the file)")
  flags.DEFINE_string("out", None, "the PNG to write (the CSV goes beside it)")
  flags.DEFINE_integer("tile_px", 160, "side of one tile, pixels")
  flags.DEFINE_integer("columns", 5, "tiles per row")
  flags.mark_flags_as_required(["embeddings", "query", "out"])
  logs.run_app(main)
