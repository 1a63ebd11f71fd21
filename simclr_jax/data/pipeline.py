"""Process-aware, deterministic and resumable tf.data input pipelines.

Each process reads its own disjoint shard of a split. A training stream is a
sequence of positions p = 0, 1, 2, ... (batch s holds positions s*b .. s*b+b-1
for the local batch b); position p belongs to epoch e = p // L (L = the
largest multiple of b not above the shard size) and picks shard row
perm_e[p % L], where perm_e is a stateless permutation seeded by
(seed, process_index, e). Its augmentation seed is derived from
(seed, process_index, p). Batch s is therefore a pure function of
(seed, s, process_index), and `start_step=k` starts the stream at position
k*b without touching (let alone augmenting) the skipped examples.

Large TFDS datasets (`data.cache = False`) cannot be read by index; they are
streamed one epoch at a time, with file order and shuffle buffer seeded by
(seed, process_index, e), and a resumed epoch skips its first records
before they are decoded.
"""

import math
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import jax
import numpy as np
from simclr_jax.data.tf_host import tf

from simclr_jax import config as config_lib
from simclr_jax.data import augment
from simclr_jax.data import fast
from simclr_jax.data import sources

Batch = Dict[str, np.ndarray]

# Salts that make the shuffling and augmentation keys independent streams.
_SHUFFLE_SALT = 0
_AUGMENT_SALT = 1
_EVAL_VIEW_SALT = 2


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  # One image per thread: parallelism comes from the parallel maps, and
  # intra-op threads would only oversubscribe the host.
  options.threading.max_intra_op_parallelism = 1
  return options


def _processes(process_index: Optional[int],
               process_count: Optional[int]) -> Tuple[int, int]:
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  if pc < 1 or not 0 <= pi < pc:
    raise ValueError(f"process_index = {pi}, process_count = {pc} is invalid: "
                     "need 0 <= process_index < process_count.")
  return pi, pc


def _local_batch(global_batch: int, process_count: int) -> int:
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"global_batch = {global_batch} is invalid: it must be a "
                     f"positive multiple of process_count = {process_count}.")
  return global_batch // process_count


def _key(seed: int, process_index: int, salt: int) -> tf.Tensor:
  base = tf.constant([seed, process_index], tf.int64)
  return tf.random.experimental.stateless_fold_in(base, salt)


def _fold(key: tf.Tensor, data: tf.Tensor) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _epoch_seed(seed: int, process_index: int, epoch: int) -> int:
  """A Python int seed for TFDS file shuffling and the shuffle buffer."""
  state = np.random.SeedSequence([seed, process_index, epoch])
  return int(state.generate_state(1)[0])


def _to_float(image: tf.Tensor) -> tf.Tensor:
  if image.dtype == tf.uint8:
    return tf.image.convert_image_dtype(image, tf.float32)
  return tf.cast(image, tf.float32)


def _fetcher(table: sources.Table,
             raw: bool = False) -> Callable[[tf.Tensor], Tuple[Any, Any]]:
  """Row index -> (float32 [H, W, 3] image in [0, 1], int32 label).

  With `raw`, encoded sources give the undecoded bytes instead (the fast
  path decodes only what its crops need).
  """
  labels = tf.constant(table.labels, tf.int32)
  if raw and table.kind != "pixels":
    data = tf.constant(list(table.data), tf.string)
    read = tf.io.read_file if table.kind == "paths" else tf.identity
    return lambda row: (read(tf.gather(data, row)), tf.gather(labels, row))
  if table.kind == "pixels":
    data = tf.constant(table.data)
    image_fn = lambda row: tf.gather(data, row)
  else:
    data = tf.constant(list(table.data), tf.string)
    read = tf.io.read_file if table.kind == "paths" else tf.identity
    image_fn = lambda row: sources.decode_image(read(tf.gather(data, row)))
  return lambda row: (_to_float(image_fn(row)), tf.gather(labels, row))


def _select_rows(table: sources.Table, indices: Optional[np.ndarray],
                 local_batch: int) -> np.ndarray:
  rows = np.arange(len(table))
  if indices is not None:
    rows = rows[np.isin(table.ids, indices)]
  if len(rows) < local_batch:
    raise ValueError(f"this process has {len(rows)} training examples, fewer "
                     f"than its batch of {local_batch}; lower global_batch.")
  return rows


def _check_indices(indices: Optional[np.ndarray], num_examples: int):
  if indices is None:
    return None
  indices = np.asarray(indices)
  if (indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer) or
      indices.size == 0 or indices.min() < 0 or indices.max() >= num_examples):
    raise ValueError(f"indices (shape {indices.shape}, dtype {indices.dtype}) "
                     "is invalid: need a non-empty 1-D integer array of "
                     f"train-split indices in [0, {num_examples}).")
  return indices


def _table_stream(table: sources.Table, rows: np.ndarray, local_batch: int,
                  seed: int, process_index: int, start_step: int,
                  raw: bool = False):
  """Infinite (image, label, augmentation key) stream over table rows."""
  fetch = _fetcher(table, raw)
  rows_t = tf.constant(rows, tf.int64)
  n = len(rows)
  epoch_len = n // local_batch * local_batch
  shuffle_key = _key(seed, process_index, _SHUFFLE_SALT)
  aug_key = _key(seed, process_index, _AUGMENT_SALT)

  def locate(pos):
    perm_key = _fold(shuffle_key, pos // epoch_len)
    j = tf.random.experimental.index_shuffle(
        pos % epoch_len, perm_key, tf.constant(n - 1, tf.int64))
    image, label = fetch(tf.gather(rows_t, j))
    return image, label, _fold(aug_key, pos)

  positions = tf.data.Dataset.range(start_step * local_batch,
                                    np.iinfo(np.int64).max)
  return [positions.map(locate, num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=True)]


def _tfds_epochs(data_cfg: Any, indices: Optional[np.ndarray],
                 local_batch: int, seed: int, process_index: int,
                 process_count: int, start_step: int, raw: bool = False):
  """One (image, label, key) dataset per epoch, streamed from TFDS.

  Sizes are checked here, eagerly; the returned generator builds each
  epoch's pipeline when the previous epoch is exhausted.
  """
  builder = sources.tfds_builder(data_cfg)
  split = data_cfg.train_split
  sizes = sources.shard_sizes(data_cfg, split, process_count)
  start = sum(sizes[:process_index])
  local = sources.tfds_local_split(split, process_index, process_count)
  n, mask_t = sizes[process_index], None
  if indices is not None:
    mask = np.zeros(sum(sizes), bool)
    mask[indices] = True
    mask_t = tf.constant(mask)
    n = int(mask[start:start + n].sum())
  if n < local_batch:
    raise ValueError(f"this process has {n} training examples, fewer than "
                     f"its batch of {local_batch}; lower global_batch.")
  epoch_len = n // local_batch * local_batch
  aug_key = _key(seed, process_index, _AUGMENT_SALT)

  def epoch_dataset(epoch, skip):
    epoch_seed = _epoch_seed(seed, process_index, epoch)
    # With a subset, read in canonical order so a record's position is its
    # split index; otherwise shuffle the files too.
    ds = sources.tfds_records(data_cfg, builder, local,
                              ordered=mask_t is not None,
                              shuffle_seed=epoch_seed)
    if mask_t is not None:
      ds = ds.enumerate(start).filter(lambda i, r: tf.gather(mask_t, i))
      ds = ds.map(lambda i, r: r)
    ds = ds.shuffle(data_cfg.shuffle_buffer, seed=epoch_seed)
    # Skipped records are read but never decoded or augmented.
    ds = ds.take(epoch_len).enumerate(epoch * epoch_len).skip(skip)
    decode = (lambda e: e) if raw else (
        lambda e: _to_float(sources.decode_image(e)))
    return ds.map(lambda p, r: (decode(r[0]), r[1], _fold(aug_key, p)),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def epochs():
    epoch, skip = divmod(start_step * local_batch, epoch_len)
    while True:
      yield epoch_dataset(epoch, skip)
      epoch, skip = epoch + 1, 0

  return epochs()


def _batches(epochs, view_fn, size: int, local_batch: int) -> Iterator[Batch]:
  """Augments, batches and prefetches each epoch dataset; yields NumPy."""
  def finish(image, label, key):
    return {"images": view_fn(image, key, size), "labels": label}

  for ds in epochs:
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    yield from ds.with_options(_options()).as_numpy_iterator()


def _train_iterator(data_cfg, aug_cfg, global_batch, seed, start_step,
                    indices, process_index, process_count,
                    view_fn, raw: bool = False) -> Iterator[Batch]:
  """Shared body of the pretraining and supervised iterators."""
  sources.check_data_config(data_cfg)
  augment.check_aug_config(aug_cfg)
  pi, pc = _processes(process_index, process_count)
  b = _local_batch(global_batch, pc)
  if start_step < 0:
    raise ValueError(f"start_step = {start_step} is invalid: must be >= 0.")
  if data_cfg.shuffle_buffer <= 0:
    config_lib.fail("data.shuffle_buffer", data_cfg.shuffle_buffer,
                    "must be positive")
  if indices is not None:
    num = sum(sources.shard_sizes(data_cfg, data_cfg.train_split, pc))
    indices = _check_indices(indices, num)
  if sources.is_random_access(data_cfg):
    table = sources.load_table(data_cfg, data_cfg.train_split, pi, pc)
    rows = _select_rows(table, indices, b)
    epochs = _table_stream(table, rows, b, seed, pi, start_step, raw)
  else:
    epochs = _tfds_epochs(data_cfg, indices, b, seed, pi, pc, start_step,
                          raw)
  return _batches(epochs, view_fn, int(data_cfg.image_size), b)


def make_pretrain_iterator(data_cfg: Any, aug_cfg: Any, global_batch: int,
                           seed: int, start_step: int = 0,
                           process_index: Optional[int] = None,
                           process_count: Optional[int] = None
                           ) -> Iterator[Batch]:
  """Infinite iterator of multi-view SimCLR batches for this process.

  Args:
    data_cfg: the `config.data` ConfigDict.
    aug_cfg: the `config.aug` ConfigDict.
    global_batch: images per step over all processes.
    seed: data order and augmentation seed.
    start_step: index of the first batch to produce (for resuming).
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    Iterator of {'images': float32 [b, V, H, W, 3], 'labels': int32 [b]} with
    b = global_batch / process_count; the V views of an image are
    independently augmented. With `data.fast_jpeg` the views come from
    `fast` (same distribution, JPEGs decoded only where cropped); with
    `aug.on_device` they are only cropped and resized (unclipped), the rest
    is done by the train step.
  """
  views = int(aug_cfg.num_views)
  on_device = bool(aug_cfg.get("on_device", False))
  use_fast = bool(data_cfg.get("fast_jpeg", False)) or on_device

  def view_fn(image, key, size):
    if use_fast:  # bytes when the source is encoded, else decoded pixels
      if image.dtype == tf.string:
        return fast.encoded_views(
            image, key, size, aug_cfg, on_device,
            dct=bool(data_cfg.get("fast_jpeg_dct", False)))
      return fast.decoded_views(image, key, size, aug_cfg, on_device)
    keys = tf.random.experimental.stateless_split(key, views)
    return tf.stack([augment.preprocess_pretrain(image, keys[v], size, aug_cfg)
                     for v in range(views)])

  return _train_iterator(data_cfg, aug_cfg, global_batch, seed, start_step,
                         None, process_index, process_count, view_fn,
                         raw=use_fast)


def make_supervised_iterator(data_cfg: Any, aug_cfg: Any, global_batch: int,
                             seed: int, start_step: int = 0,
                             indices: Optional[np.ndarray] = None,
                             process_index: Optional[int] = None,
                             process_count: Optional[int] = None
                             ) -> Iterator[Batch]:
  """Infinite iterator of crop+flip batches (linear eval, fine-tuning).

  Args:
    data_cfg: the `config.data` ConfigDict.
    aug_cfg: the `config.aug` ConfigDict (crop ranges, flip_prob).
    global_batch: images per step over all processes.
    seed: data order and augmentation seed.
    start_step: index of the first batch to produce (for resuming).
    indices: optional train-split indices to train on (a labelled subset).
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    Iterator of {'images': float32 [b, H, W, 3], 'labels': int32 [b]}.
  """
  def view_fn(image, key, size):
    return augment.preprocess_supervised_train(image, key, size, aug_cfg)

  return _train_iterator(data_cfg, aug_cfg, global_batch, seed, start_step,
                         indices, process_index, process_count, view_fn)


def num_eval_batches(data_cfg: Any, split: str, global_batch: int,
                     process_count: Optional[int] = None) -> int:
  """Number of batches every process yields from `make_eval_iterator`.

  Args:
    data_cfg: the `config.data` ConfigDict.
    split: split name.
    global_batch: images per step over all processes.
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    ceil(largest shard / local batch).
  """
  _, pc = _processes(0, process_count)
  b = _local_batch(global_batch, pc)
  return math.ceil(max(sources.shard_sizes(data_cfg, split, pc)) / b)


def make_eval_iterator(data_cfg: Any, aug_cfg: Any, split: str,
                       global_batch: int,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       view: Optional[int] = None, seed: int = 0
                       ) -> Iterator[Batch]:
  """Finite iterator over a split in which every example counts once.

  The last batches are padded (zero images, label 0, mask False) so that all
  processes yield `num_eval_batches(...)` batches of the same size.

  With `view` set, each image is a pretraining view instead (the full SimCLR
  augmentation) whose randomness is a function of (seed, view, example
  index) only: view 0 and view 1 of a split are the same positive pairs on
  every call and on any number of hosts (the held-out signals' pairs).

  Args:
    data_cfg: the `config.data` ConfigDict.
    aug_cfg: the `config.aug` ConfigDict (eval_crop_proportion).
    split: split name.
    global_batch: images per step over all processes.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    view: None for the evaluation crop, else which augmented view.
    seed: the augmentation seed of the views.

  Returns:
    Iterator of {'images': float32 [b, H, W, 3], 'labels': int32 [b],
    'mask': bool [b]}.
  """
  augment.check_aug_config(aug_cfg)
  pi, pc = _processes(process_index, process_count)
  b = _local_batch(global_batch, pc)
  num_batches = num_eval_batches(data_cfg, split, global_batch, pc)
  if sources.is_random_access(data_cfg):
    table = sources.load_table(data_cfg, split, pi, pc)
    n = len(table)
    fetch, ids = _fetcher(table), tf.constant(table.ids, tf.int64)
    ds = tf.data.Dataset.range(n).map(
        lambda row: (*fetch(row), tf.gather(ids, row)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    builder = sources.tfds_builder(data_cfg)
    local = sources.tfds_local_split(split, pi, pc)
    sizes = sources.shard_sizes(data_cfg, split, pc)
    n, first = sizes[pi], sum(sizes[:pi])
    ds = sources.tfds_records(data_cfg, builder, local, ordered=True)
    ds = ds.enumerate(first).map(
        lambda i, ey: (_to_float(sources.decode_image(ey[0])), ey[1], i))
  size = int(data_cfg.image_size)
  crop = float(aug_cfg.eval_crop_proportion)
  view_key = _fold(_key(seed, 0, _EVAL_VIEW_SALT), view or 0)

  def prepare(image, label, example):
    if view is None:
      image = augment.preprocess_eval(image, size, crop)
    else:
      image = augment.preprocess_pretrain(image, _fold(view_key, example),
                                          size, aug_cfg)
    return {"images": image, "labels": label, "mask": tf.constant(True)}

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  padding = {"images": tf.zeros([size, size, 3], tf.float32),
             "labels": tf.constant(0, tf.int32), "mask": tf.constant(False)}
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(padding).repeat(num_batches * b - n))
  ds = ds.batch(b, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options()).as_numpy_iterator()
