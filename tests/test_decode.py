"""One decoder for every path: training's TensorFlow decode and the TF-free
Pillow decode (embed, neighbors, the encoder API) give the same pixels.

A corpus of small files covering bit depths, palettes, alpha, greyscale,
CMYK and animations is written with Pillow and by hand (16-bit PNGs, GIFs
whose first frame is smaller than the canvas, a CMYK JPEG without its Adobe
marker); each file must be accepted or refused by both decoders alike, and
decode to identical uint8 arrays when accepted. Independent references: the
16-bit samples' high byte, written pixels of lossless files.
"""

import io
import logging as py_logging
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import folder as folder_config
from simclr_jax.data import fast
from simclr_jax.data import folders
from simclr_jax.data import imagefiles
from simclr_jax.data import sources

pytestmark = pytest.mark.quick

H, W = 13, 17


def _chunk(tag, data):
  return (struct.pack(">I", len(data)) + tag + data +
          struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff))


def _png(rows, width, height, bit_depth, color_type):
  """PNG bytes from packed rows (no filter), written without Pillow."""
  raw = b"".join(b"\x00" + r for r in rows)
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) +
          _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _png16(samples, color_type):
  """A 16-bit PNG of uint16 samples [H, W, C] (big-endian on disk)."""
  rows = [r.astype(">u2").tobytes() for r in samples.reshape(H, -1)]
  return _png(rows, W, H, 16, color_type)


def _png_low_bits(values, bits):
  """A 1, 2 or 4-bit greyscale PNG of values [H, W]."""
  per = 8 // bits
  padded = np.zeros((H, -(-W // per) * per), np.int64)
  padded[:, :W] = values
  packed = np.zeros((H, padded.shape[1] // per), np.uint8)
  for k in range(per):
    packed |= (padded[:, k::per] << (8 - bits * (k + 1))).astype(np.uint8)
  return _png([r.tobytes() for r in packed], W, H, bits, 0)


def _strip_adobe(jpeg):
  """The JPEG without its APP14 Adobe segment."""
  i = jpeg.index(b"\xff\xee")
  return jpeg[:i] + jpeg[i + 2 + int.from_bytes(jpeg[i + 2:i + 4], "big"):]


def _small_first_frame(gif, left, top):
  """A Pillow GIF with its screen grown and its first frame moved."""
  b = bytearray(gif)
  b[6:8] = (W + left + 2).to_bytes(2, "little")
  b[8:10] = (H + top + 1).to_bytes(2, "little")
  pos = 13 + (3 * 2 ** ((b[10] & 7) + 1) if b[10] & 0x80 else 0)
  while b[pos] == 0x21:  # extensions before the first frame
    pos += 2
    while b[pos]:
      pos += b[pos] + 1
    pos += 1
  assert b[pos] == 0x2C
  b[pos + 1:pos + 3] = left.to_bytes(2, "little")
  b[pos + 3:pos + 5] = top.to_bytes(2, "little")
  return bytes(b)


def _top_down(bmp):
  """A bottom-up 24-bit BMP stored top-down (negative height)."""
  b = bytearray(bmp)
  height, = struct.unpack_from("<i", b, 22)
  start, = struct.unpack_from("<I", b, 10)
  row = (len(b) - start) // height
  rows = [bytes(b[start + i * row:start + (i + 1) * row])
          for i in range(height)]
  b[start:] = b"".join(rows[::-1])
  struct.pack_into("<i", b, 22, -height)
  return bytes(b)


def _encode(image, fmt, **kwargs):
  buf = io.BytesIO()
  image.save(buf, fmt, **kwargs)
  return buf.getvalue()


def _corpus():
  """{file name: bytes} and {file name: expected pixels} where known."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (H, W, 3), np.uint8)
  yy, xx = np.mgrid[0:4 * H, 0:4 * W]
  smooth = np.stack([xx * 4 % 256, yy * 5 % 256, (xx + yy) * 3 % 256],
                    -1).astype(np.uint8)  # for lossy codecs
  rgba = np.dstack([rgb, rgb[..., :1]])
  pal = Image.fromarray(rgb).quantize(16)
  frames = [Image.fromarray(np.roll(smooth, 7 * i, 1)).quantize(64)
            for i in range(3)]
  animation = {"save_all": True, "append_images": frames[1:], "duration": 50}
  cmyk = np.stack([xx * 2, yy * 4, (xx + yy) * 2, 255 - yy * 4],
                  -1).astype(np.uint8)
  g16 = rng.integers(0, 65536, (H, W, 1), np.uint16)
  rgb16 = rng.integers(0, 65536, (H, W, 3), np.uint16)
  files = {
      "rgb.png": _encode(Image.fromarray(rgb), "PNG"),
      "grey.png": _encode(Image.fromarray(rgb[..., 0]), "PNG"),
      "grey16.png": _png16(g16, 0),
      "grey16_la.png": _png16(rng.integers(0, 65536, (H, W, 2)), 4),
      "rgb16.png": _png16(rgb16, 2),
      "rgba16.png": _png16(rng.integers(0, 65536, (H, W, 4)), 6),
      "grey1.png": _png_low_bits(rng.integers(0, 2, (H, W)), 1),
      "grey2.png": _png_low_bits(rng.integers(0, 4, (H, W)), 2),
      "grey4.png": _png_low_bits(rng.integers(0, 16, (H, W)), 4),
      "palette.png": _encode(pal, "PNG"),
      "palette_alpha.png": _encode(pal, "PNG", transparency=3),
      "la.png": _encode(Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]),
                                        "LA"), "PNG"),
      "rgba.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
      "animated.png": _encode(frames[0], "PNG", **animation),
      "rgb.jpg": _encode(Image.fromarray(smooth), "JPEG", quality=90),
      "rgb444.jpeg": _encode(Image.fromarray(smooth), "JPEG", quality=95,
                             subsampling=0),
      "progressive.jpg": _encode(Image.fromarray(smooth), "JPEG",
                                 progressive=True),
      "grey.jpg": _encode(Image.fromarray(smooth[..., 0]), "JPEG"),
      "cmyk.jpg": _encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95),
      "mpo.jpg": _encode(Image.fromarray(smooth), "MPO", save_all=True,
                         append_images=[Image.fromarray(smooth[::-1])]),
      "png_named.jpg": _encode(Image.fromarray(rgb), "PNG"),
      "rgb.bmp": _encode(Image.fromarray(rgb), "BMP"),
      "rgba.bmp": _encode(Image.fromarray(rgba, "RGBA"), "BMP"),
      "top_down.bmp": _top_down(_encode(Image.fromarray(rgb), "BMP")),
      "lossless.webp": _encode(Image.fromarray(rgb), "WEBP", lossless=True),
      "lossy.webp": _encode(Image.fromarray(smooth), "WEBP", quality=80),
      "rgba.webp": _encode(Image.fromarray(rgba, "RGBA"), "WEBP",
                           lossless=True, exact=True),  # keeps RGB under a=0
      "animated.webp": _encode(frames[0], "WEBP", lossless=True, **animation),
      "lossy_alpha.webp": _encode(Image.fromarray(np.dstack(
          [smooth, smooth[..., :1]]), "RGBA"), "WEBP", quality=70),
      "palette.gif": _encode(pal, "GIF"),
      "transparent.gif": _encode(pal, "GIF", transparency=3),
      "animated.gif": _encode(frames[0], "GIF", **animation),
      "small_frame.gif": _small_first_frame(_encode(pal, "GIF"), 3, 2),
      "small_frame_alpha.gif": _small_first_frame(
          _encode(pal, "GIF", transparency=3), 1, 4),
  }
  files["cmyk_no_adobe.jpg"] = _strip_adobe(files["cmyk.jpg"])
  # Truncated GIFs: TensorFlow keeps the frames read so far; a cut inside
  # the first frame fails in both decoders.
  noise = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), np.uint8)
                           ).quantize(64) for _ in range(3)]
  gif = _encode(noise[0], "GIF", save_all=True, append_images=noise[1:])
  files["no_trailer.gif"] = gif[:-1]
  files["cut_in_frame_2.gif"] = gif[:len(gif) * 2 // 3]
  expected = {
      "rgb.png": rgb, "rgb.bmp": rgb, "rgba.bmp": rgb, "lossless.webp": rgb,
      "top_down.bmp": rgb,
      "rgba.png": rgb, "rgba.webp": rgb, "png_named.jpg": rgb,
      "grey16.png": np.repeat((g16 >> 8).astype(np.uint8), 3, axis=2),
      "rgb16.png": (rgb16 >> 8).astype(np.uint8),
  }
  refused = {
      "palette.bmp": _encode(pal, "BMP"),  # TF reads indices as grey
      "grey.bmp": _encode(Image.fromarray(rgb[..., 0]), "BMP"),  # 8-bit
      "tiff_named.png": _encode(Image.fromarray(rgb), "TIFF"),
      "truncated.png": files["rgb.png"][:60],
      "truncated.jpg": files["rgb.jpg"][:len(files["rgb.jpg"]) // 2],
      "cut_in_frame_1.gif": gif[:1000],  # frame 1: about 2 kB of noise
      "text.webp": b"not an image at all",
  }
  return files, refused, expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  files, refused, expected = _corpus()
  for name, data in {**files, **refused}.items():
    with open(root / name, "wb") as f:
      f.write(data)
  return str(root), sorted(files), sorted(refused), expected


def _train_decode(path):
  return sources.decode_image(tf.io.read_file(path)).numpy()


def test_both_decoders_give_identical_pixels(corpus):
  root, accepted, _, expected = corpus
  for name in accepted:
    path = os.path.join(root, name)
    trained, embedded = _train_decode(path), imagefiles.read_image(path)
    assert trained.dtype == embedded.dtype == np.uint8, name
    assert trained.shape == embedded.shape, name
    assert trained.shape[2] == 3, name
    np.testing.assert_array_equal(trained, embedded, err_msg=name)
    if name in expected:
      np.testing.assert_array_equal(embedded, expected[name], err_msg=name)


def test_both_decoders_refuse_the_same_files(corpus):
  root, accepted, refused, _ = corpus
  paths = [os.path.join(root, n) for n in accepted + refused]
  # Training's check (data.skip_corrupt and the up-front check) and embed's.
  train_ok = sources._readable(paths)  # pylint: disable=protected-access
  embed_ok = []
  for p in paths:
    try:
      imagefiles.read_image(p)
      embed_ok.append(True)
    except (OSError, ValueError, SyntaxError):
      embed_ok.append(False)
  names = accepted + refused
  assert dict(zip(names, train_ok.tolist())) == dict(zip(names, embed_ok))
  assert train_ok.tolist() == [True] * len(accepted) + [False] * len(refused)


def test_16_bit_png_keeps_the_high_byte(corpus):
  """The bug this fixes: Pillow's 16-bit greyscale came out nearly white."""
  root, _, _, expected = corpus
  grey = imagefiles.read_image(os.path.join(root, "grey16.png"))
  np.testing.assert_array_equal(grey, expected["grey16.png"])
  assert 100 < grey.mean() < 155  # uniform 16-bit noise, not ~255


def test_gif_transparency_and_canvas_are_black(corpus):
  root = corpus[0]
  rgb = imagefiles.read_image(os.path.join(root, "small_frame.gif"))
  assert rgb.shape == (H, W, 3)  # TF's canvas: the largest frame
  assert not rgb[:2].any() and not rgb[:, :3].any()  # outside the frame
  palette = imagefiles.read_image(os.path.join(root, "palette.gif"))
  np.testing.assert_array_equal(rgb[2:, 3:], palette[:H - 2, :W - 3])


def test_fast_jpeg_window_sees_the_same_pixels(corpus):
  """data.fast_jpeg decodes JPEG windows; its crops equal crops of Pillow's."""
  root = corpus[0]
  aug = folder_config.get_config("tiny").aug
  size = 8
  key = tf.constant([3, 4], tf.int64)
  for name in ("rgb.jpg", "progressive.jpg", "grey.jpg", "cmyk.jpg",
               "cmyk_no_adobe.jpg", "mpo.jpg"):
    path = os.path.join(root, name)
    views = fast.encoded_views(tf.io.read_file(path), key, size, aug,
                               on_device=True).numpy()
    reference = fast.decoded_views(tf.constant(imagefiles.read_image(path)),
                                   key, size, aug, on_device=True).numpy()
    np.testing.assert_array_equal(views, reference, err_msg=name)


def test_listings_agree_and_name_what_they_skip(tmp_path, caplog):
  root = tmp_path / "images"
  os.makedirs(root / "sub")
  files, _, _ = _corpus()
  for name in ("rgb.png", "palette.gif", "lossy.webp", "rgb.bmp"):
    (root / "sub" / name).write_bytes(files[name])
  (root / "rgb.jpg").write_bytes(files["rgb.jpg"])
  (root / "scan.tiff").write_bytes(b"II*\x00")
  (root / "sub" / "notes.txt").write_text("x")
  (root / ".hidden.png").write_bytes(files["rgb.png"])
  with caplog.at_level(py_logging.WARNING):
    listed = imagefiles.list_images(str(root))
  assert listed == ["rgb.jpg", "sub/lossy.webp", "sub/palette.gif",
                    "sub/rgb.bmp", "sub/rgb.png"]
  assert "scan.tiff" in caplog.text and "sub/notes.txt" in caplog.text
  caplog.clear()
  cfg = folder_config.get_config("tiny").data
  cfg.data_dir, cfg.holdout_fraction = str(root), 0.0
  with caplog.at_level(py_logging.WARNING):
    paths, _ = folders.split_files(cfg, "train")
  assert [os.path.relpath(p, root).replace(os.sep, "/")
          for p in paths] == listed
  assert "scan.tiff" in caplog.text and "sub/notes.txt" in caplog.text


def test_extensions_and_documented_formats_agree():
  assert imagefiles.IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".gif",
                                         ".webp", ".bmp")
  for word in ("JPEG", "PNG", "GIF", "WebP", "BMP"):
    assert word in imagefiles.FORMATS
