"""Dataset sources: scikit-learn digits, TFDS builders and image folders.

Image-folder layouts (labelled or not, held-out eval split) are resolved in
`folders`.

A source answers three questions for the pipeline: how big each split is and
how it is divided among processes (`dataset_info`, `shard_sizes`), what the
labels of a split are (`load_labels`), and what this process's examples are.
The examples come either as a `Table` held for random access (digits, image
folders, and TFDS when `data.cache` is set) or, for large TFDS datasets, as a
stream of encoded records (`tfds_records`). Nothing here downloads anything.

Example index i of a split is the i-th example in the split's canonical
order: the `train_test_split` order for digits, sorted (class, file name) for
labelled folders, the relative path for unlabelled ones, and the TFDS file
order for TFDS (read with no interleaving).
"""

import dataclasses
import functools
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from absl import logging

# tf_host first: it hides the accelerators before TFDS loads TensorFlow.
from simclr_jax.data.tf_host import tf  # pylint: disable=g-bad-import-order
import tensorflow_datasets as tfds  # pylint: disable=g-bad-import-order

from simclr_jax import config as config_lib
from simclr_jax.data import folders
from simclr_jax.data import imagefiles
from simclr_jax.data.common import DatasetInfo

SOURCES = ("digits", "tfds", "folder")
DIGITS_SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Table:
  """This process's examples of a split, held in memory for random access.

  Attributes:
    kind: 'pixels' (uint8 or float32 [n, H, W, 3]), 'encoded' (PNG/JPEG bytes
      [n]) or 'paths' (file names [n]).
    data: the per-example data described by `kind`.
    labels: int32 [n].
    ids: int64 [n], the index of each row in the whole split.
  """
  kind: str
  data: np.ndarray
  labels: np.ndarray
  ids: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


def _fail(field: str, value: Any, allowed: str) -> None:
  config_lib.fail(field, value, allowed)


def is_random_access(data_cfg: Any) -> bool:
  """True when the source is read as a `Table` (not streamed from TFDS).

  Args:
    data_cfg: the `config.data` ConfigDict.

  Returns:
    False only for TFDS with `data.cache` off.
  """
  return data_cfg.source != "tfds" or bool(data_cfg.cache)


def check_data_config(data_cfg: Any) -> None:
  """Validates source, TFDS name, data_dir and split names (no reading).

  Args:
    data_cfg: the `config.data` ConfigDict.

  Raises:
    ValueError: naming the invalid field, its value and what is allowed.
  """
  if data_cfg.source not in SOURCES:
    _fail("data.source", data_cfg.source, f"allowed {SOURCES}")
  if int(data_cfg.image_size) <= 0:
    _fail("data.image_size", data_cfg.image_size, "must be positive")
  if data_cfg.source == "digits":
    for field in ("train_split", "eval_split"):
      if data_cfg[field] not in DIGITS_SPLITS:
        _fail(f"data.{field}", data_cfg[field],
              f"digits splits are {DIGITS_SPLITS}")
    if not 0 < data_cfg.digits_test_fraction < 1:
      _fail("data.digits_test_fraction", data_cfg.digits_test_fraction,
            "allowed (0, 1)")
    return
  if data_cfg.source == "folder" and not data_cfg.data_dir:
    _fail("data.data_dir", data_cfg.data_dir, "the image-folder root is "
          "required for data.source='folder'")
  if data_cfg.source == "folder":
    folders.check_folder_config(data_cfg)
  if data_cfg.data_dir and not tf.io.gfile.isdir(data_cfg.data_dir):
    _fail("data.data_dir", data_cfg.data_dir, "no such directory")
  if data_cfg.source == "tfds":
    base = str(data_cfg.name).split("/")[0].split(":")[0]
    # Registered builders only; nothing is downloaded to answer this.
    if base not in tfds.list_builders(with_community_datasets=False):
      _fail("data.name", data_cfg.name, "not a registered TFDS builder")


# ---------------------------------------------------------------- digits ---


@functools.lru_cache(maxsize=4)
def _digits(test_fraction: float, split_seed: int,
            size: int) -> Dict[str, Any]:
  """The fixed stratified digits split, upscaled once to `size`.

  Returns {'train': (images, labels), 'test': (images, labels),
  'native_shape': (8, 8, 3)}.
  """
  # Imported here so that scikit-learn is needed only by the digits source.
  # pylint: disable=g-import-not-at-top
  from sklearn import datasets as sk_datasets
  from sklearn import model_selection
  # pylint: enable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(labels)), test_size=test_fraction,
      random_state=split_seed, stratify=labels)
  # Raw values are 0..16; scale to [0, 1] and make three channels.
  images = (digits.images / digits.images.max()).astype(np.float32)
  images = np.repeat(images[..., None], 3, axis=-1)
  images = tf.image.resize(images, [size, size],
                           method=tf.image.ResizeMethod.BICUBIC)
  images = np.clip(images.numpy(), 0.0, 1.0)
  out = {"native_shape": (*digits.images.shape[1:], 3)}
  for name, idx in zip(DIGITS_SPLITS, (train_idx, test_idx)):
    split_images, split_labels = images[idx], labels[idx]
    split_images.flags.writeable = False
    split_labels.flags.writeable = False
    out[name] = (split_images, split_labels)
  return out


def _digits_split(data_cfg: Any, split: str) -> Any:
  if split not in DIGITS_SPLITS + ("native_shape",):
    _fail("split", split, f"digits splits are {DIGITS_SPLITS}")
  return _digits(float(data_cfg.digits_test_fraction),
                 int(data_cfg.digits_split_seed),
                 int(data_cfg.image_size))[split]


# ---------------------------------------------------------------- folder ---


def _folder_files(data_cfg: Any, split: str) -> Tuple[List[str], np.ndarray]:
  """Image paths of a split in canonical order, and their labels."""
  paths, labels = folders.split_files(data_cfg, split)
  if data_cfg.get("skip_corrupt", False):
    # Skipped files are not examples: split sizes, shards and evaluation
    # masks all count the readable ones only.
    ok = _readable(paths)
    if not ok.all():
      _log_skipped(split, [p for p, keep in zip(paths, ok) if not keep],
                   len(paths))
    paths = [p for p, keep in zip(paths, ok) if keep]
    labels = labels[ok]
  return paths, labels


_SKIP_LOGGED = set()


def _log_skipped(split: str, bad: List[str], total: int) -> None:
  """Logs the skipped files of a split once per process."""
  if (split, tuple(bad)) in _SKIP_LOGGED:
    return
  _SKIP_LOGGED.add((split, tuple(bad)))
  shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more"
                                if len(bad) > 5 else "")
  logging.warning("data.skip_corrupt: skipped %d of %d image files of split "
                  "%r that cannot be decoded: %s", len(bad), total, split,
                  shown)


def _is_bmp(encoded: tf.Tensor) -> tf.Tensor:
  return tf.equal(tf.strings.substr(encoded, 0, 2), b"BM")


def _bmp_accepted(encoded: tf.Tensor) -> tf.Tensor:
  """`imagefiles.bmp_problem(...) is None`, on the encoded bytes."""
  def u(offset, size):  # little-endian unsigned field of the header
    raw = tf.io.decode_raw(tf.strings.substr(encoded, offset, size), tf.uint8)
    raw = tf.cast(raw, tf.int64)
    return tf.reduce_sum(raw * tf.bitwise.left_shift(
        tf.constant(1, tf.int64), 8 * tf.range(size, dtype=tf.int64)))

  def check():
    bits, compression = u(28, 2), u(30, 4)
    bits_ok = tf.reduce_any(tf.equal(bits, imagefiles.BMP_BITS))
    masks = tf.stack([u(54 + 4 * i, 4) for i in range(3)])
    masks_ok = tf.logical_and(
        tf.greater_equal(tf.strings.length(encoded), 66),
        tf.reduce_all(tf.equal(masks, imagefiles.BMP_MASKS)))
    bitfields_ok = tf.logical_and(
        tf.equal(compression, 3), tf.logical_and(tf.equal(bits, 32), masks_ok))
    return tf.logical_and(bits_ok, tf.logical_or(tf.equal(compression, 0),
                                                 bitfields_ok))
  # Short files fail in the decoder itself (substr must stay in range).
  return tf.cond(tf.greater_equal(tf.strings.length(encoded), 54), check,
                 lambda: tf.constant(True))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes image bytes to RGB, the same pixels as `imagefiles.read_image`.

  JPEGs with libjpeg's accurate IDCT (`imagefiles.JPEG_DCT_METHOD`); other
  formats (PNG, GIF, WebP, BMP) at their own channel count, then greyscale
  replicated and alpha dropped. BMPs other than uncompressed 24/32-bit fail
  (TensorFlow would read a palette's indices as grey levels). See
  `simclr_jax.data.imagefiles` for the rules both decoders share.

  Args:
    encoded: scalar string tensor.

  Returns:
    uint8 [H, W, 3].
  """
  def jpeg():
    return tf.io.decode_jpeg(encoded, channels=3,
                             dct_method=imagefiles.JPEG_DCT_METHOD)

  def other():
    # channels=0: decode_image's channels=3 refuses WebPs with alpha.
    image = tf.io.decode_image(encoded, channels=0, expand_animations=False)
    grey = tf.shape(image)[2] < 3  # L or LA: replicate L; RGBA: drop A
    image = tf.gather(image, tf.where(grey, [0, 0, 0], [0, 1, 2]), axis=2)
    return image

  ok = tf.cond(_is_bmp(encoded), lambda: _bmp_accepted(encoded),
               lambda: tf.constant(True))
  with tf.control_dependencies([tf.debugging.Assert(ok, [
      "BMP other than uncompressed 24/32-bit: not read"])]):
    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  return tf.ensure_shape(image, [None, None, 3])


# Decode results by file path: every count and table of a split sees the
# same files, and each file is decoded for checking once per process.
_READABLE: Dict[str, bool] = {}


def _readable(paths: List[str]) -> np.ndarray:
  """Which files decode as images: one parallel decode pass, errors caught."""
  todo = [p for p in paths if p not in _READABLE]
  if todo:
    paths_t = tf.constant(todo, tf.string)

    def try_decode(i):
      image = decode_image(tf.io.read_file(tf.gather(paths_t, i)))
      return i, tf.shape(image)[0]  # forces the whole decode

    ds = tf.data.Dataset.range(len(todo)).map(
        try_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors()
    ok = np.zeros(len(todo), bool)
    for i, _ in ds.as_numpy_iterator():
      ok[i] = True
    _READABLE.update(zip(todo, ok.tolist()))
  return np.asarray([_READABLE[p] for p in paths], bool)


def _drop_unreadable(data_cfg: Any, paths: np.ndarray, labels: np.ndarray,
                     ids: np.ndarray) -> Tuple[np.ndarray, ...]:
  """Fails on corrupt or truncated files, or drops them when allowed.

  Returns:
    (paths, labels, ids) without the unreadable files.
  """
  ok = _readable(list(paths)) if len(paths) else np.ones(0, bool)
  if ok.all():
    return paths, labels, ids
  bad = [str(p) for p in paths[~ok]]
  shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more"
                                if len(bad) > 5 else "")
  if not data_cfg.get("skip_corrupt", False):
    raise ValueError(f"{len(bad)} image file(s) cannot be decoded (corrupt, "
                     "truncated, or not one of the kinds read: "
                     f"{imagefiles.FORMATS}): {shown}. Replace or delete "
                     "them, or set "
                     "data.skip_corrupt=True (now False) to skip them.")
  logging.warning("data.skip_corrupt: skipped %d of %d image files that "
                  "cannot be decoded: %s", len(bad), len(paths), shown)
  return paths[ok], labels[ok], ids[ok]


def _read_pixels_or_bytes(paths: List[str]) -> Tuple[str, np.ndarray]:
  """Reads files; decoded uint8 pixels if all share a shape, else the bytes."""
  encoded = np.asarray([tf.io.gfile.GFile(p, "rb").read() for p in paths],
                       dtype=object)
  decoded = [decode_image(e).numpy() for e in encoded]
  if len({d.shape for d in decoded}) <= 1 and decoded:
    return "pixels", np.stack(decoded)
  return "encoded", encoded


# ------------------------------------------------------------------ tfds ---


def tfds_builder(data_cfg: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `data.name` in `data.data_dir` (no download).

  Args:
    data_cfg: the `config.data` ConfigDict.

  Returns:
    The builder ('' data_dir means the TFDS default).
  """
  return tfds.builder(data_cfg.name, data_dir=data_cfg.data_dir or None)


def tfds_local_split(split: str, process_index: int, process_count: int):
  """This process's contiguous, disjoint part of a TFDS split.

  Args:
    split: TFDS split string (may itself be a slice such as 'train[:90%]').
    process_index: this process.
    process_count: number of processes.

  Returns:
    A split specification accepted by `builder.as_dataset`.
  """
  return tfds.even_splits(split, n=process_count)[process_index]


def tfds_records(data_cfg: Any, builder: tfds.core.DatasetBuilder, split: Any,
                 ordered: bool, shuffle_seed: Optional[int] = None):
  """(encoded image, int32 label) records of a TFDS split, images undecoded.

  Args:
    data_cfg: the `config.data` ConfigDict (image_key, label_key, name).
    builder: the TFDS builder.
    split: a split name or slice (e.g. from `tfds_local_split`).
    ordered: read in canonical order (no file shuffling or interleaving).
    shuffle_seed: file-shuffling seed when not `ordered`.

  Returns:
    A `tf.data.Dataset` of (bytes, int32) pairs.
  """
  if ordered:
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
  else:
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed)
  try:
    ds = builder.as_dataset(
        split=split, shuffle_files=not ordered, read_config=read_config,
        decoders={data_cfg.image_key: tfds.decode.SkipDecoding()})
  except AssertionError as e:  # TFDS's "could not find data" error.
    config_lib.fail("data.name", data_cfg.name, "the dataset is not prepared "
                    f"in data.data_dir={data_cfg.data_dir!r} ({e})")
  image_key, label_key = data_cfg.image_key, data_cfg.label_key
  return ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))


def _tfds_count(data_cfg: Any, builder: tfds.core.DatasetBuilder,
                split: Any) -> int:
  try:
    return int(builder.info.splits[split].num_examples)
  except KeyError:
    pass  # No split metadata (e.g. under tfds.testing.mock_data).
  n = int(tfds_records(data_cfg, builder, split, ordered=True).cardinality())
  if n < 0:
    _fail("data.name", data_cfg.name, f"unknown size of split {split!r}")
  return n


def _tfds_table(data_cfg: Any, process_index: int, process_count: int,
                split: str) -> Table:
  builder = tfds_builder(data_cfg)
  sizes = _tfds_shard_sizes(data_cfg, builder, split, process_count)
  n = sizes[process_index]
  local = tfds_local_split(split, process_index, process_count)
  ds = tfds_records(data_cfg, builder, local, ordered=True)
  shape = builder.info.features[data_cfg.image_key].shape
  if None not in shape[:2]:
    # Fixed image shape: keep decoded pixels (no decoding per epoch).
    ds = ds.map(lambda e, y: (tf.ensure_shape(decode_image(e),
                                              (*shape[:2], 3)), y))
  kind = "pixels" if None not in shape[:2] else "encoded"
  start = sum(sizes[:process_index])
  ids = np.arange(start, start + n, dtype=np.int64)
  if n == 0:  # More processes than examples.
    empty = np.zeros((0, *shape[:2], 3), np.uint8) if kind == "pixels" else (
        np.zeros((0,), object))
    return Table(kind, empty, np.zeros((0,), np.int32), ids)
  data, labels = ds.batch(n).get_single_element()
  return Table(kind, data.numpy(), labels.numpy(), ids)


def _tfds_shard_sizes(data_cfg: Any, builder: tfds.core.DatasetBuilder,
                      split: str, process_count: int) -> List[int]:
  return [_tfds_count(data_cfg, builder, tfds_local_split(split, i,
                                                          process_count))
          for i in range(process_count)]


# ------------------------------------------------------------ public API ---


def dataset_info(data_cfg: Any) -> DatasetInfo:
  """Split sizes, class count and image shape, without decoding images.

  Args:
    data_cfg: the `config.data` ConfigDict.

  Returns:
    A `DatasetInfo` for the configured train and eval splits.

  Raises:
    ValueError: for an invalid source, TFDS name, data_dir, key or split.
  """
  check_data_config(data_cfg)
  splits = (data_cfg.train_split, data_cfg.eval_split)
  if data_cfg.source == "digits":
    counts = {s: len(_digits_split(data_cfg, s)[1]) for s in splits}
    classes = np.unique(_digits_split(data_cfg, data_cfg.train_split)[1])
    return DatasetInfo(counts, int(classes.size),
                       _digits_split(data_cfg, "native_shape"))
  if data_cfg.source == "folder":
    folder = folders.resolve(data_cfg)
    has_eval = folder.eval_kind != folders.EVAL_NONE
    counts = {s: len(_folder_files(data_cfg, s)[1])
              for s in (splits if has_eval else splits[:1])}
    return DatasetInfo(counts, len(folder.classes), (None, None, 3),
                       labelled=folder.labelled, has_eval=has_eval)
  builder = tfds_builder(data_cfg)
  features = builder.info.features
  for field in ("image_key", "label_key"):
    if data_cfg[field] not in features:
      _fail(f"data.{field}", data_cfg[field],
            f"features of {data_cfg.name} are {sorted(features.keys())}")
  counts = {s: _tfds_count(data_cfg, builder, s) for s in splits}
  shape = features[data_cfg.image_key].shape
  return DatasetInfo(counts, int(features[data_cfg.label_key].num_classes),
                     (shape[0], shape[1], 3))


def shard_sizes(data_cfg: Any, split: str, process_count: int) -> List[int]:
  """Number of examples of `split` that each process reads.

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: split name.
    process_count: number of processes.

  Returns:
    A list of `process_count` sizes summing to the split size.
  """
  check_data_config(data_cfg)
  if data_cfg.source == "tfds":
    return _tfds_shard_sizes(data_cfg, tfds_builder(data_cfg), split,
                             process_count)
  n = len(load_labels(data_cfg, split))
  # Strided shards: process i owns examples i, i + P, i + 2P, ...
  return [len(range(i, n, process_count)) for i in range(process_count)]


def load_labels(data_cfg: Any, split: str) -> np.ndarray:
  """Labels of the whole split in canonical order (e.g. for subsets).

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: split name.

  Returns:
    int32 [num_examples].
  """
  check_data_config(data_cfg)
  if data_cfg.source == "digits":
    return np.array(_digits_split(data_cfg, split)[1])
  if data_cfg.source == "folder":
    return _folder_files(data_cfg, split)[1]
  ds = tfds_records(data_cfg, tfds_builder(data_cfg), split, ordered=True)
  return np.fromiter(ds.map(lambda e, y: y).as_numpy_iterator(), np.int32)


def check_split_readable(data_cfg: Any, split: str) -> None:
  """Decodes every image file of this process's part of `split` once.

  Raises (or, with `data.skip_corrupt`, logs the count of) unreadable files,
  as loading the split would; sources other than folders have nothing to
  check.
  """
  if data_cfg.source != "folder":
    return
  import jax  # pylint: disable=g-import-not-at-top
  paths, labels = _folder_files(data_cfg, split)
  ids = np.arange(len(labels), dtype=np.int64)
  pi, pc = jax.process_index(), jax.process_count()
  _drop_unreadable(data_cfg, np.asarray(paths, dtype=object)[pi::pc],
                   labels[pi::pc], ids[pi::pc])


def load_table(data_cfg: Any, split: str, process_index: int,
               process_count: int) -> Table:
  """This process's examples of `split` for random access.

  Digits and folders are divided among processes by stride (process i owns
  examples i, i + P, ...), TFDS by contiguous `tfds.even_splits` slices.

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: split name.
    process_index: this process.
    process_count: number of processes.

  Returns:
    A `Table` of this process's rows.
  """
  check_data_config(data_cfg)
  if data_cfg.source == "tfds":
    return _tfds_table(data_cfg, process_index, process_count, split)
  if data_cfg.source == "digits":
    images, labels = _digits_split(data_cfg, split)
    kind, data = "pixels", images
  else:
    paths, labels = _folder_files(data_cfg, split)
    kind, data = "paths", np.asarray(paths, dtype=object)
  ids = np.arange(len(labels), dtype=np.int64)[process_index::process_count]
  data, labels = data[ids], labels[ids]
  if kind == "paths":
    data, labels, ids = _drop_unreadable(data_cfg, data, labels, ids)
  if kind == "paths" and data_cfg.cache:
    kind, data = _read_pixels_or_bytes(list(data))
  return Table(kind, data, labels, ids)
