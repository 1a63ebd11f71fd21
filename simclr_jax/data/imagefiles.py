"""Image files on disk, without TensorFlow: which files count, their pixels.

Which files: the folder data source (through `tf.io.gfile`, so that it also
reads cloud buckets), the embed command and the encoder API share one rule:
every file whose name ends in one of `IMAGE_EXTENSIONS` (any case) anywhere
under a root, hidden files and folders (names starting with '.') left out,
ordered by the path relative to the root. Visible files with other names are
not read, and the listing names them in the log.

Which pixels: training decodes with TensorFlow (`data.sources.decode_image`,
and `tf.io.decode_and_crop_jpeg` on the fast path), the TF-free paths
(`embed`, `neighbors`, `load_encoder(...).embed_files`) with Pillow
(`read_image`). Both give the same uint8 RGB array for every file either
accepts, and refuse the same files (tests/test_decode.py):

* JPEG (and MPO, a camera's JPEG with extra pictures: the first one),
  greyscale, YCbCr or CMYK: libjpeg's accurate integer inverse DCT
  (`JPEG_DCT_METHOD`, Pillow's only one) and TensorFlow's CMYK to RGB rule;
* PNG at any bit depth: 16-bit samples keep their high byte (v >> 8), as
  TensorFlow's PNG decoder; palette expanded; alpha dropped, not composited;
  greyscale replicated to three channels; an animated PNG's default image;
* GIF: the first frame, on TensorFlow's canvas (the largest frame's width
  and height, not the GIF's screen size); its transparent pixels and the
  canvas outside it are black; a file cut after its first frame still
  decodes;
* WebP, lossy or lossless, with or without alpha (dropped), animated: the
  first frame;
* BMP: uncompressed 24- or 32-bit (the fourth byte dropped). Palette, 16-bit
  and RLE-compressed BMPs are refused: TensorFlow reads an 8-bit BMP's
  palette indices as grey levels.

Files are decoded by their contents, not their name (a PNG named .jpg is
read as a PNG). Anything else (TIFF, a TIFF named .png, corrupt or truncated
files) cannot be decoded: training names it and stops, or skips it with
`data.skip_corrupt` and names it in the log; embed names it and stops, or
skips it with `--skip_unreadable` and names it in the log and the .npz.
"""

import os
import struct
from typing import List, Optional, Tuple

from absl import logging
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")

# The accepted formats in words, for messages and documentation.
FORMATS = "JPEG, PNG, GIF, WebP and uncompressed 24/32-bit BMP"

# libjpeg's accurate integer IDCT: the one Pillow uses, so both decoders give
# the same pixels (TensorFlow's default, INTEGER_FAST, differs by up to ~7).
JPEG_DCT_METHOD = "INTEGER_ACCURATE"

# BMP: bits per pixel and compression accepted (BI_RGB = 0; BI_BITFIELDS = 3
# only for 32 bits with the standard BGRA masks below).
BMP_BITS = (24, 32)
BMP_MASKS = (0x00FF0000, 0x0000FF00, 0x000000FF)

# Pillow's names of the formats both decoders read.
_PIL_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP")

# How many skipped names a log line shows.
_SHOWN = 5


class UnsupportedImage(ValueError):
  """A readable image of a kind the training decoder cannot read the same."""


def is_image_name(name: str) -> bool:
  """True for a visible file name with an image extension."""
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def shown(names: List[str]) -> str:
  """The first few names, and how many more."""
  more = len(names) - _SHOWN
  return ", ".join(names[:_SHOWN]) + (f" and {more} more" if more > 0 else "")


def log_not_images(root: str, names: List[str]) -> None:
  """Names in the log the visible files under `root` that are not read."""
  if names:
    logging.warning("%d file(s) under %s are not read as images (names not "
                    "ending in %s): %s", len(names), root,
                    ", ".join(IMAGE_EXTENSIONS), shown(sorted(names)))


def list_images(root: str) -> List[str]:
  """Every image file under `root`, recursively, as sorted relative paths.

  Visible files with other names are named in the log (`log_not_images`).

  Args:
    root: a local directory.

  Returns:
    Relative paths with '/' separators, sorted; hidden entries skipped.

  Raises:
    FileNotFoundError: `root` is not a directory.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root!r} is not a directory")
  found, others = [], []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    rel = os.path.relpath(dirpath, root)
    for name in filenames:
      path = (name if rel == "." else os.path.join(rel, name)).replace(
          os.sep, "/")
      if is_image_name(name):
        found.append(path)
      elif not name.startswith("."):
        others.append(path)
  log_not_images(root, others)
  return sorted(found)


def bmp_problem(header: bytes) -> Optional[str]:
  """Why a BMP is refused (None when accepted), from its first 66 bytes."""
  if len(header) < 54:
    return "truncated BMP header"
  bits, compression = struct.unpack_from("<HI", header, 28)
  if bits not in BMP_BITS:
    return f"{bits}-bit BMP (only 24- and 32-bit are read)"
  if compression == 0:
    return None
  if compression == 3 and bits == 32 and len(header) >= 66 and (
      struct.unpack_from("<3I", header, 54) == BMP_MASKS):
    return None
  return f"compressed BMP (compression {compression})"


def gif_frames(data: bytes) -> Tuple[List[Tuple[int, int, int, int]], int]:
  """A GIF's frame rectangles and the first frame's colour count.

  Args:
    data: the file's bytes.

  Returns:
    ([(left, top, width, height)] of the frames whose descriptor is there,
    in order; the size of the first frame's colour table).

  Raises:
    OSError: no frame, or a broken block structure.
  """
  try:
    flags, pos = data[10], 13
    table = 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
    pos += 3 * table
    frames, first_colours = [], None
    while data[pos] != 0x3B:  # trailer
      if data[pos] == 0x21:  # extension: label, then sub-blocks
        pos += 2
      elif data[pos] == 0x2C:  # image descriptor
        frames.append(struct.unpack_from("<4H", data, pos + 1))
        local = data[pos + 9]
        pos += 10
        if local & 0x80:
          colours = 2 ** ((local & 7) + 1)
          pos += 3 * colours
        else:
          colours = table
        if first_colours is None:
          first_colours = colours
        pos += 1  # LZW minimum code size
      else:
        raise OSError(f"bad GIF block 0x{data[pos]:02x}")
      while data[pos]:
        pos += data[pos] + 1
      pos += 1
  except (IndexError, struct.error):
    pass  # truncated: TensorFlow keeps the frames read so far
  if not frames:
    raise OSError("GIF without frames")
  return frames, first_colours


def _gif_rgb(image) -> np.ndarray:
  """A GIF's first frame as TensorFlow decodes it.

  TensorFlow's canvas is the largest frame width by the largest frame height
  (not the GIF's screen size); the first frame sits at its offset, clipped;
  the canvas outside it and its transparent pixels are black.
  """
  with open(image.filename, "rb") as f:
    frames, colours = gif_frames(f.read())
  transparency = image.info.get("transparency")
  left, top, width, height = frames[0]
  canvas_h = max(f[3] for f in frames)
  canvas_w = max(f[2] for f in frames)
  image.load()
  index = np.asarray(image)[top:top + height, left:left + width]
  if index.shape != (height, width):
    raise UnsupportedImage("GIF frame outside its screen")
  if colours and index.size and index.max() >= colours:
    raise UnsupportedImage("GIF colour index outside its colour table")
  rgb = np.asarray(image.convert("RGB"), np.uint8)[top:top + height,
                                                    left:left + width].copy()
  if transparency is not None:
    rgb[index == transparency] = 0
  out = np.zeros((canvas_h, canvas_w, 3), np.uint8)
  h = max(0, min(height, canvas_h - top))
  w = max(0, min(width, canvas_w - left))
  out[top:top + h, left:left + w] = rgb[:h, :w]
  return out


def _cmyk_rgb(image) -> np.ndarray:
  """TensorFlow's CMYK to RGB: r = k c / 255 on the stored (Adobe) values."""
  # Pillow inverts every CMYK JPEG's stored values (Adobe's convention);
  # TensorFlow inverts only when the file has an Adobe marker.
  cmyk = np.asarray(image, np.int32)
  if "adobe" in image.info:
    cmyk = 255 - cmyk  # the stored values
  return (cmyk[..., 3:] * cmyk[..., :3] // 255).astype(np.uint8)


def decode_pil(image) -> np.ndarray:
  """The uint8 RGB pixels of an open Pillow image, as training sees them.

  Args:
    image: a `PIL.Image.Image` just opened (nothing seeked or loaded).

  Returns:
    uint8 [H, W, 3].

  Raises:
    UnsupportedImage: a format or variant training cannot read the same.
  """
  fmt = image.format
  if fmt not in _PIL_FORMATS:
    raise UnsupportedImage(f"{fmt or 'unknown'} images are not read (only "
                           f"{FORMATS})")
  if fmt == "BMP":
    with open(image.filename, "rb") as f:
      problem = bmp_problem(f.read(66))
    if problem:
      raise UnsupportedImage(problem)
  if fmt == "GIF":
    return _gif_rgb(image)
  image.load()  # decodes now, so a truncated file fails here
  if image.mode == "CMYK":
    return _cmyk_rgb(image)
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale PNG
    grey = (np.asarray(image).astype(np.int64) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)
  return np.asarray(image.convert("RGB"), np.uint8)


def read_image(path: str) -> np.ndarray:
  """Decodes an image file to RGB, the same pixels as training.

  Args:
    path: a file in one of the accepted formats (see the module docstring).

  Returns:
    uint8 [H, W, 3].

  Raises:
    OSError: the file cannot be read or decoded (e.g. corrupt or truncated).
    UnsupportedImage: (a ValueError) an image of a kind that is not read.
  """
  # Imported here: Pillow is needed only where files are decoded.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return decode_pil(image)
