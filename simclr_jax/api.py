"""The Python API: load an encoder, embed images.

    import simclr_jax
    encoder = simclr_jax.load_encoder("runs/mine/export")
    vectors = encoder.embed(images)  # uint8 [N, H, W, 3], or a list of any sizes

`load_encoder` reads an export of ours (`python -m simclr_jax.export`, the
`export/` of fine-tuning and distillation) or a converted official checkpoint
(`python -m simclr_jax.convert`). Images get the evaluation preprocessing the
export records (no flag needed; 0.875 for the official ImageNet models): the
central square of `crop_proportion` x the shorter side, a bicubic resize to
the export's image size (TF's kernel, so the result equals the tf.data
evaluation pipeline to float rounding), values in [0, 1]. The embed command
(`python -m simclr_jax.embed`) is this API over the files of a folder.

Neither this module nor anything it imports needs TensorFlow.
"""

import concurrent.futures
import functools
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax.data import imagefiles

# Bicubic resize as TensorFlow computes it (`ResizeBicubic` with half-pixel
# centres): Keys' cubic with a = -0.5, the fractional position rounded to a
# 1/1024 table, taps outside the image dropped and the rest renormalised.
_KEYS_A = -0.5
_TABLE = 1024
Images = Union[np.ndarray, Sequence[np.ndarray]]


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  a = _KEYS_A
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=256)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """The [out, in] matrix of a 1-D bicubic resize (TensorFlow's weights).

  Args:
    in_size: input length.
    out_size: output length.

  Returns:
    float64 [out_size, in_size]; each row sums to 1.
  """
  weights = np.zeros((out_size, in_size))
  scale = np.float32(in_size / out_size)
  for i in range(out_size):
    x = float(np.float32((i + 0.5) * scale - 0.5))
    x0 = int(np.floor(x))
    t = np.round((x - x0) * _TABLE) / _TABLE
    for k in range(x0 - 1, x0 + 3):
      if 0 <= k < in_size:
        weights[i, k] += _keys_cubic(t + x0 - k)
    weights[i] /= weights[i].sum()
  weights.flags.writeable = False
  return weights


def _as_float_rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"an image of shape {image.shape} is invalid: need "
                     "[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] (alpha dropped)")
  image = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else (
      image[..., :3])
  if image.dtype == np.uint8:
    return image.astype(np.float32) * np.float32(1 / 255)
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"image dtype {image.dtype} is invalid: need uint8 "
                     "(0..255) or floats in [0, 1]")
  return image.astype(np.float32)


def preprocess(image: np.ndarray, size: int,
               crop_proportion: float) -> np.ndarray:
  """The evaluation preprocessing of one image (see the module docstring).

  Args:
    image: uint8 [H, W, C] (0..255) or float [H, W, C] in [0, 1], C in
      1, 3, 4, any H and W; [H, W] for grey.
    size: output side.
    crop_proportion: fraction of the shorter side kept by the centre crop.

  Returns:
    float32 [size, size, 3] in [0, 1].
  """
  image = _as_float_rgb(image)
  h, w = image.shape[:2]
  # The official crop: side rint(p * shorter), offsets ((H - side) + 1) // 2.
  side = int(np.rint(np.float32(crop_proportion) * np.float32(min(h, w))))
  top, left = (h - side + 1) // 2, (w - side + 1) // 2
  crop = image[top:top + side, left:left + side].astype(np.float64)
  weights = resize_weights(side, int(size))
  # Rows, then columns: two small products. One three-operand einsum would
  # sum over rows and columns at once (size^2 * side^2 terms: ~20 s for one
  # 224 px image).
  rows = np.einsum("ih,hwc->iwc", weights, crop)
  out = np.einsum("iwc,jw->ijc", rows, weights)
  return np.clip(out, 0.0, 1.0).astype(np.float32)


class Encoder:
  """A loaded encoder: `embed(images)` gives one vector per image.

  Attributes:
    path: the export it was loaded from.
    image_size: the network input side the export records.
    crop_proportion: the evaluation centre crop the export records.
    model_config: the architecture (a plain dict).
    num_classes: classes of a stored classifier head (0 = none).
    layers: the layers `embed` can return: 'h' (the representation, what
      linear evaluation uses), 'proj1' .. 'projK' (projection-head layers)
      and 'z' (the last head layer, what the contrastive loss sees).
  """

  def __init__(self, model: Any, variables: Dict[str, Any],
               meta: Dict[str, Any], path: str):
    """Wraps an inference model; use `load_encoder` to build one."""
    from simclr_jax.exports import format as export_lib  # pylint: disable=g-import-not-at-top
    pre = export_lib.preprocessing(meta)
    self.path = path
    self.meta = meta
    self.image_size = int(pre["image_size"])
    self.crop_proportion = float(pre["crop_proportion"])
    self.model_config = dict(meta["model"])
    self.num_classes = int(meta["num_classes"])
    heads = int(self.model_config.get("head_layers", 0))
    self.layers = ("h",) + tuple(f"proj{k}" for k in range(1, heads + 1)) + (
        ("z",) if heads else ())
    self._model = model
    devices = jax.local_devices()
    self._mesh = Mesh(np.asarray(devices), ("batch",))
    self._variables = jax.device_put(variables,
                                     NamedSharding(self._mesh, P()))
    self._fns = {}

  @property
  def preprocessing(self) -> Dict[str, Any]:
    """What `embed` does to an image before the network (JSON-able)."""
    from simclr_jax.exports import format as export_lib  # pylint: disable=g-import-not-at-top
    return export_lib.preprocessing_meta(self.image_size, self.crop_proportion)

  def preprocess(self, images: Images) -> np.ndarray:
    """float32 [N, S, S, 3]: the network input for each image."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
      # A lone [H, W, C] array would be read as H images of one row each.
      raise ValueError(f"images of shape {images.shape} are invalid: need "
                       "[N, H, W, C] or a list of [H, W, C] arrays (one "
                       "image: image[None] or [image])")
    return np.stack([preprocess(im, self.image_size, self.crop_proportion)
                     for im in images]) if len(images) else np.zeros(
                         (0, self.image_size, self.image_size, 3), np.float32)

  def _fn(self, layer: str):
    if layer not in self.layers:
      raise ValueError(f"layer={layer!r} is invalid: allowed {self.layers}")
    if layer not in self._fns:
      model = self._model

      def fn(variables, x):
        if layer == "h":
          return model.apply(variables, x, False, method=model.encode)
        out = model.apply(variables, x, False)
        return out["z"] if layer == "z" else out["proj"][int(layer[4:]) - 1]
      self._fns[layer] = jax.jit(fn)
    return self._fns[layer]

  def embed_preprocessed(self, inputs: np.ndarray, batch_size: int = 64,
                         layer: str = "h") -> np.ndarray:
    """Embeds network inputs (from `preprocess`), every row exactly once.

    Batches are padded to `batch_size` (rounded up to the local device
    count) and split over the local devices; padding rows are dropped.

    Args:
      inputs: float32 [N, S, S, 3].
      batch_size: images per forward pass.
      layer: one of `layers`.

    Returns:
      float32 [N, D].
    """
    fn = self._fn(layer)
    n_dev = self._mesh.size
    b = max(n_dev, -(-int(batch_size) // n_dev) * n_dev)
    sharding = NamedSharding(self._mesh, P("batch"))
    out = []
    for start in range(0, len(inputs), b):
      chunk = inputs[start:start + b]
      padded = np.zeros((b,) + inputs.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      rows = fn(self._variables, jax.device_put(padded, sharding))
      out.append(np.asarray(rows, np.float32)[:len(chunk)])
    if not out:
      dim = jax.eval_shape(fn, self._variables, jax.ShapeDtypeStruct(
          (n_dev,) + inputs.shape[1:], np.float32)).shape[-1]
      return np.zeros((0, dim), np.float32)
    return np.concatenate(out)

  def embed(self, images: Images, batch_size: int = 64,
            layer: str = "h") -> np.ndarray:
    """Embeds images of any size.

    Args:
      images: uint8 [N, H, W, 3] (0..255), floats in [0, 1], or a list of
        [H, W, C] arrays of different sizes.
      batch_size: images per forward pass.
      layer: 'h' (default), 'proj1' .. 'projK' or 'z'; see `layers`.

    Returns:
      float32 [N, D] as NumPy.
    """
    return self.embed_preprocessed(self.preprocess(images), batch_size, layer)

  def embed_files(self, root: str, paths: Sequence[str], batch_size: int = 64,
                  layer: str = "h", skip_unreadable: bool = False,
                  progress: bool = False, threads: int = 8
                  ) -> Tuple[np.ndarray, List[str], List[str]]:
    """Embeds image files, decoding the next batch while one runs.

    Args:
      root: the folder the relative `paths` are in.
      paths: relative paths of the images.
      batch_size: images per forward pass.
      layer: see `embed`.
      skip_unreadable: skip files that cannot be decoded (else raise).
      progress: show a progress bar (images/s, ETA).
      threads: decoding threads.

    Returns:
      (embeddings float32 [M, D], the M embedded paths, the skipped paths).

    Raises:
      UnreadableImage: a file cannot be decoded and `skip_unreadable` is off.
    """
    def load(rel):
      try:
        image = imagefiles.read_image(os.path.join(root, rel))
      except (OSError, ValueError, SyntaxError) as e:
        if not skip_unreadable:
          raise UnreadableImage(rel, e) from e
        return rel, None
      return rel, preprocess(image, self.image_size, self.crop_proportion)

    kept, skipped, rows = [], [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
      batches = _prefetched(pool, load, list(paths), batch_size)
      if progress:
        from simclr_jax.engine import progress as progress_lib  # pylint: disable=g-import-not-at-top
        batches = progress_lib.track(batches, total=len(paths), desc="embed",
                                     unit="images", size_fn=len)
      for batch in batches:
        good = [(rel, x) for rel, x in batch if x is not None]
        skipped += [rel for rel, x in batch if x is None]
        kept += [rel for rel, _ in good]
        if good:
          rows.append(self.embed_preprocessed(
              np.stack([x for _, x in good]), batch_size, layer))
    if not rows:
      rows = [self.embed_preprocessed(np.zeros(
          (0, self.image_size, self.image_size, 3), np.float32), batch_size,
                                      layer)]
    return np.concatenate(rows), kept, skipped


class UnreadableImage(ValueError):
  """An image file that cannot be decoded.

  Corrupt, truncated, not an image, or a kind of image that training does
  not read the same way (`imagefiles.UnsupportedImage`).
  """

  def __init__(self, path: str, error: Exception):
    super().__init__(f"{path}: cannot be decoded as an image ({error}; "
                     f"read: {imagefiles.FORMATS})")
    self.path = path


def _prefetched(pool, load, paths: List[str], batch_size: int
                ) -> Iterator[List[Tuple[str, Optional[np.ndarray]]]]:
  """Batches of loaded files; the next batch decodes while one is used."""
  chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
  pending = [pool.map(load, chunk) for chunk in chunks[:2]]
  for i in range(len(chunks)):
    batch = list(pending.pop(0))
    if i + 2 < len(chunks):
      pending.append(pool.map(load, chunks[i + 2]))
    yield batch


def load_encoder(path: str) -> Encoder:
  """Loads an export (ours, or a converted official checkpoint) for embedding.

  Args:
    path: the export directory (it holds meta.json and variables/).

  Returns:
    An `Encoder` on the local devices, in inference mode.

  Raises:
    ValueError: `path` is not an export, or its variables do not fit the
      model its meta.json describes.
  """
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise ValueError(f"{path!r} is not an export directory (an export holds "
                     "meta.json and variables/; make one with python -m "
                     "simclr_jax.export or python -m simclr_jax.convert)")
  model, variables, meta = encoders.load_export_model(path, "export")
  return Encoder(model, variables, meta, os.path.abspath(path))
