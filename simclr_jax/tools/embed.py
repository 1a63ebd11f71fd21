"""Embeds every image of a folder with an export.

  python -m simclr_jax.embed --export=runs/mine/export --images=PATH \\
      --out=runs/mine/embeddings.npz [--layer=h] [--batch_size=64]

Every JPEG, PNG, WebP or BMP file under --images (recursively, hidden
entries skipped) is embedded exactly once, on every local device, with the
export's evaluation preprocessing (`simclr_jax.api`). The .npz holds:

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
from typing import Any, Dict

import numpy as np
from absl import app
from absl import flags
from absl import logging

from simclr_jax import api
from simclr_jax import config as config_lib
from simclr_jax import imagefiles
from simclr_jax.engine import logs
from simclr_jax.exports import embeddings as embeddings_csv

EMBEDDINGS_FORMAT = "simclr_jax.embeddings/1"


def check_out_file(out: str) -> None:
  """Refuses an --out that would replace anything but our embeddings file."""
  if out.endswith(".csv"):  # the CSV layout: simclr_jax.exports.embeddings
    embeddings_csv.check_out(out)
    return
  if not out.endswith(".npz"):
    config_lib.fail("--out", out, "must end in .npz")
  if os.path.isdir(out):
    config_lib.fail("--out", out, "is a directory; give a file name")
  if os.path.lexists(out):
    try:
      with np.load(out) as f:
        ours = str(f["format"]) == EMBEDDINGS_FORMAT
    except (OSError, ValueError, KeyError):
      ours = False
    if not ours:
      config_lib.fail("--out", out, "exists and is not an embeddings file of "
                      "simclr_jax; nothing was replaced. Choose another name")


def save_embeddings(out: str, arrays: Dict[str, Any]) -> None:
  """Writes the .npz atomically: a hidden file beside it, then a rename."""
  if out.endswith(".csv"):  # paths and embeddings only
    embeddings_csv.write_csv(out, arrays["paths"], arrays["embeddings"])
    return
  directory, base = os.path.split(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".{base}.{os.getpid()}.partial.npz")
  try:
    np.savez(tmp, format=np.str_(EMBEDDINGS_FORMAT), **arrays)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


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
