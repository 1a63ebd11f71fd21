"""Embeds every image of a folder with an export.

  python -m simclr_jax.embed --export=runs/mine/export --images=PATH \\
      --out=runs/mine/embeddings.npz [--layer=h] [--batch_size=64]

Every JPEG, PNG, GIF, WebP or BMP file under --images (names ending in
.jpg .jpeg .png .gif .webp .bmp, any case; recursively, hidden entries
skipped; other files are named in the log) is embedded exactly once, on every
local device, with the export's evaluation preprocessing (`simclr_jax.api`),
from the same pixels training decodes (`simclr_jax.data.imagefiles`). The .npz
holds:

  embeddings      float32 [N, D]
  paths           [N] relative paths (a plain string array: no pickle needed)
  skipped         relative paths of unreadable files (--skip_unreadable)
  layer, image_size, crop_proportion, export, images_root, format

Read it with `np.load(path)` (allow_pickle stays False). An --out ending in
.csv is written as `filename,embedding_0,...[,label]` instead (see
`simclr_jax.exports.embeddings`).
"""

import os
import time
import zipfile
from typing import Any, Dict, Optional

import numpy as np
from absl import app
from absl import flags
from absl import logging

from simclr_jax import api
from simclr_jax import config as config_lib
from simclr_jax.data import imagefiles
from simclr_jax.engine import logs
from simclr_jax.exports import embeddings as embeddings_csv
from simclr_jax.tools import outputs

EMBEDDINGS_FORMAT = "simclr_jax.embeddings/1"
# What `embed_folder` writes besides the format marker.
EMBEDDINGS_KEYS = ("embeddings", "paths", "skipped", "layer", "image_size",
                   "crop_proportion", "export", "images_root")


def _member_shape(archive: zipfile.ZipFile, key: str) -> tuple:
  """The shape of array `key` of an .npz, from its header alone."""
  with archive.open(key + ".npy") as member:
    version = np.lib.format.read_magic(member)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(member)[0]


def embeddings_problem(path: str) -> Optional[str]:
  """Why the file `path` is not a complete embeddings file of ours, or None.

  A complete one is an .npz archive whose every member is intact (CRC), with
  the format marker, every key `embed_folder` writes, and as many rows of
  embeddings as paths.
  """
  with open(path, "rb") as f:
    head = f.read(6)
  if not head:
    return "an empty file"
  if head == b"\x93NUMPY":
    return "a .npy array, not an .npz archive"
  if not zipfile.is_zipfile(path):
    return "not an .npz archive, or a truncated one"
  try:
    with np.load(path, allow_pickle=False) as f:
      if "format" not in f.files:
        return "an .npz without the simclr_jax format marker"
      found = str(f["format"])
      if found != EMBEDDINGS_FORMAT:
        return f"format {found[:60]!r}, not {EMBEDDINGS_FORMAT!r}"
      missing = [k for k in EMBEDDINGS_KEYS if k not in f.files]
      if missing:
        return f"no {', '.join(missing)}"
      broken = f.zip.testzip()
      if broken is not None:
        return f"member {broken} is damaged"
      rows, names = (_member_shape(f.zip, k) for k in ("embeddings", "paths"))
  except Exception as e:  # pylint: disable=broad-except
    # Whatever a damaged archive raises (BadZipFile, EOFError, zlib.error..).
    return f"damaged ({type(e).__name__})"
  if len(rows) != 2 or len(names) != 1 or rows[0] != names[0]:
    return f"embeddings {rows} do not match paths {names}"
  return None


def check_out_file(out: str) -> None:
  """Refuses an --out that would replace anything but our embeddings file."""
  if out.endswith(".csv"):  # the CSV layout: simclr_jax.exports.embeddings
    embeddings_csv.check_out(out)
    return
  if not out.endswith(".npz"):
    config_lib.fail("--out", out, "must end in .npz or .csv")
  outputs.check_replaceable("--out", out, "an embeddings file",
                            embeddings_problem)


def save_embeddings(out: str, arrays: Dict[str, Any]) -> None:
  """Writes the embeddings atomically: a hidden file beside it, then a rename.

  The format follows the name: .csv (paths and embeddings, see
  `simclr_jax.exports.embeddings`) or .npz. The --out check runs again just
  before the rename, so a file put there while the images were embedded is
  not replaced either.
  """
  if out.endswith(".csv"):
    embeddings_csv.write_csv(out, arrays["paths"], arrays["embeddings"])
    return
  outputs.write_atomic(
      out, lambda f: np.savez(f, format=np.str_(EMBEDDINGS_FORMAT), **arrays),
      check=lambda: check_out_file(out))


def embed_folder(export: str, images: str, out: str, batch_size: int = 64,
                 layer: str = "h", skip_unreadable: bool = False,
                 progress: bool = True) -> Dict[str, Any]:
  """Embeds every image under `images` and writes `out`.

  Args:
    export: the export directory.
    images: the image folder.
    out: the .npz to write.
    batch_size: images per forward pass.
    layer: 'h', 'proj1' .. 'projK' or 'z'.
    skip_unreadable: skip (and count) files that cannot be decoded.
    progress: show a progress bar.

  Returns:
    A summary: {'num_images', 'dim', 'skipped', 'seconds'}.
  """
  check_out_file(out)
  if not os.path.isdir(export):
    config_lib.fail("--export", export, "no such directory")
  if batch_size < 1:
    config_lib.fail("--batch_size", batch_size, "must be >= 1")
  if not os.path.isdir(images):
    config_lib.fail("--images", images, "no such directory")
  paths = imagefiles.list_images(images)
  if not paths:
    config_lib.fail("--images", images, "holds no image files (ending in "
                    f"{imagefiles.IMAGE_EXTENSIONS}, any depth)")
  try:
    encoder = api.load_encoder(export)
  except ValueError as e:
    config_lib.fail("--export", export, str(e))
  if layer not in encoder.layers:
    config_lib.fail("--layer", layer, f"allowed {encoder.layers}")
  logging.info("Embedding %d images of %s (%s, %d px, centre crop %.3f)",
               len(paths), images, layer, encoder.image_size,
               encoder.crop_proportion)
  start = time.time()
  try:
    emb, kept, skipped = encoder.embed_files(
        images, paths, batch_size, layer, skip_unreadable, progress=progress)
  except api.UnreadableImage as e:
    config_lib.fail("--images", images, f"{e}; replace or delete it, or pass "
                    "--skip_unreadable to skip and count such files")
  seconds = time.time() - start
  save_embeddings(out, {
      "embeddings": emb.astype(np.float32),
      "paths": np.array(kept, dtype=np.str_),
      "skipped": np.array(skipped, dtype=np.str_),
      "layer": np.str_(layer), "image_size": np.int64(encoder.image_size),
      "crop_proportion": np.float64(encoder.crop_proportion),
      "export": np.str_(encoder.path),
      "images_root": np.str_(os.path.abspath(images))})
  if skipped:
    logging.warning("--skip_unreadable: skipped %d of %d files that cannot be "
                    "decoded: %s", len(skipped), len(paths),
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5
                                              else ""))
  return {"num_images": len(kept), "dim": int(emb.shape[1]),
          "skipped": len(skipped), "seconds": seconds}


def main(argv) -> None:
  """Embeds --images with --export into --out."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  summary = embed_folder(fv.export, fv.images, fv.out, fv.batch_size,
                         fv.layer, fv.skip_unreadable)
  skipped = (f", {summary['skipped']} unreadable skipped"
             if summary["skipped"] else "")
  print(f"embedded {summary['num_images']} images ({summary['dim']}-d "
        f"{fv.layer}{skipped}) in {summary['seconds']:.1f} s to {fv.out}")


def cli() -> None:
  """The command line: python -m simclr_jax.embed."""
  flags.DEFINE_string("export", None, "export directory (python -m "
                      "simclr_jax.export or convert)")
  flags.DEFINE_string("images", None, "folder of images (searched "
                      "recursively)")
  flags.DEFINE_string("out", None, "the .npz (or .csv) file to write")
  flags.DEFINE_integer("batch_size", 64, "images per forward pass")
  flags.DEFINE_string("layer", "h", "h (representation) | proj1..projK "
                      "(projection-head layer) | z (last head layer)")
  flags.DEFINE_bool("skip_unreadable", False, "skip and count files that "
                    "cannot be decoded instead of stopping")
  flags.mark_flags_as_required(["export", "images", "out"])
  logs.run_app(main)
