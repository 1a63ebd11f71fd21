r"""Embedding maps and similarity heatmaps, as PNG files and TensorBoard images.

* Embedding map: the representations h of `viz.tsne_points` eval-split
  examples, placed in 2-D by t-SNE (scikit-learn) or UMAP (when installed),
  coloured by label with a legend. Classes that separate here usually
  separate under a linear probe too.
* Similarity heatmap: the cosine similarities of the projections z of one
  batch of `viz.heatmap_batch` images x V training views, rows and columns
  ordered view-major (all first views, then all second views, ...), so the
  positive pairs sit on the off-diagonals at offsets of N. A bright
  off-diagonal on a dark background is what the contrastive loss asks for.

During pretraining `Pictures` writes both at every evaluation; for an export
or the newest checkpoint of a run:

  python -m simclr_jax.visualize --config=configs/digits.py \
      --export=EXPORT_DIR --out_dir=pictures
  python -m simclr_jax.visualize --config=configs/digits.py \
      --workdir=runs/digits --out_dir=runs/digits/pictures_now
"""

import os
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from simclr_jax import data as data_lib
from simclr_jax import parallel
from simclr_jax import plots
from simclr_jax import preview
from simclr_jax import progress

AXIS = parallel.AXIS
METHODS = ("auto", "tsne", "umap")
METHOD_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def check_viz_config(viz_cfg: Any, num_devices: Optional[int] = None) -> None:
  """Validates `config.viz`.

  Args:
    viz_cfg: the `config.viz` ConfigDict.
    num_devices: global device count; when given, `heatmap_batch` must divide.

  Raises:
    ValueError: naming the field, its value and what is allowed.
  """
  preview.check_viz_config(viz_cfg)

  def fail(field, allowed):
    raise ValueError(f"viz.{field} = {viz_cfg[field]!r} is invalid: "
                     f"{allowed}.")
  if viz_cfg.embedding_method not in METHODS:
    fail("embedding_method", f"allowed {METHODS}")
  if viz_cfg.embedding_method == "umap" and not _has_umap():
    fail("embedding_method", "umap-learn is not installed (use 'auto' or "
         "'tsne')")
  if int(viz_cfg.tsne_points) < 3:
    fail("tsne_points", "must be >= 3")
  if not 0 < float(viz_cfg.tsne_perplexity) < int(viz_cfg.tsne_points):
    fail("tsne_perplexity", f"must be in (0, viz.tsne_points = "
         f"{viz_cfg.tsne_points})")
  if int(viz_cfg.tsne_threads) < 0:
    fail("tsne_threads", "must be >= 0 (0 = all cores)")
  if int(viz_cfg.heatmap_batch) < 2:
    fail("heatmap_batch", "must be >= 2")
  if num_devices and int(viz_cfg.heatmap_batch) % num_devices:
    fail("heatmap_batch", f"must be divisible by the number of devices "
         f"({num_devices})")
  if int(viz_cfg.figure_px) < 100:
    fail("figure_px", "must be >= 100")


def _has_umap() -> bool:
  try:
    import umap  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


# ------------------------------------------------------------ computing ---


def make_apply_fn(model, mesh, output: str, train: bool = False) -> Callable:
  """jit(shard_map) of one model output, batch-split.

  Args:
    model: the SimCLR model.
    mesh: the device mesh.
    output: 'h', 'proj', 'z' or 'logits'.
    train: normalise with the (global) statistics of the batch, as the
      training step does, instead of the moving averages; the updated
      statistics are discarded.

  Returns:
    (variables, images [B, ..., H, W, 3]) -> output [B, ..., d]; leading
    dimensions beyond the first (views) are folded into one batch.
  """
  def replica(variables, images):
    lead = images.shape[:-3]
    x = images.reshape((-1,) + images.shape[-3:])
    if train:
      out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      out = model.apply(variables, x, train=False)
    out = out[output]
    return out.reshape(lead + out.shape[1:])

  return jax.jit(parallel.per_replica(replica, mesh, in_specs=(P(), P(AXIS)),
                                      out_specs=P(AXIS)))


def _gather(x) -> np.ndarray:
  """All rows of a batch-split global array, on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def extract_features(apply_fn: Callable, variables: Any,
                     batches: Iterable[Dict[str, np.ndarray]], mesh,
                     max_points: int, total: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
  """Runs `apply_fn` over padded eval batches until `max_points` examples.

  Args:
    apply_fn: from `make_apply_fn`.
    variables: replicated model variables.
    batches: this host's padded batches {'images', 'labels', 'mask'}.
    mesh: the device mesh.
    max_points: number of (valid) examples wanted.
    total: number of batches, for the progress report.

  Returns:
    (features float32 [n, d], labels int [n]) with n <= max_points, the
    padding rows removed; identical on every process.
  """
  feats, labels, count = [], [], 0
  for batch in progress.track(batches, total=total, desc="embedding features",
                              unit="batches",
                              enabled=jax.process_index() == 0):
    batch = parallel.host_to_global(mesh, batch)
    out = _gather(apply_fn(variables, batch["images"]))
    mask = _gather(batch["mask"]).astype(bool)
    feats.append(out[mask].astype(np.float32))
    labels.append(_gather(batch["labels"])[mask])
    count += int(mask.sum())
    if count >= max_points:
      break
  if not feats:
    raise ValueError("the evaluation split yielded no batches")
  return (np.concatenate(feats)[:max_points],
          np.concatenate(labels)[:max_points])


def embed_2d(features: np.ndarray, method: str, perplexity: float,
             seed: int, threads: int = 1) -> Tuple[np.ndarray, str]:
  """2-D coordinates of `features` by t-SNE or UMAP.

  Args:
    features: float [n, d].
    method: 'auto' (UMAP when installed, else t-SNE), 'tsne' or 'umap'.
    perplexity: t-SNE perplexity; UMAP's n_neighbors is its rounding.
    seed: random state of the method.
    threads: OpenMP threads (0 = the library's default, all cores).

  Returns:
    (coords float [n, 2], the method used: 'tsne' | 'umap').
  """
  n = len(features)
  if not 0 < perplexity < n:
    raise ValueError(f"viz.tsne_perplexity = {perplexity!r} is invalid: must "
                     f"be in (0, {n}), the number of points.")
  # pylint: disable=g-import-not-at-top
  from threadpoolctl import threadpool_limits
  # Busy hosts (input pipeline, XLA) make all-core OpenMP many times slower.
  with threadpool_limits(limits=threads if threads > 0 else None,
                         user_api="openmp"):
    return _embed_2d(features, method, perplexity, seed)


def _embed_2d(features, method, perplexity, seed):
  if method == "umap" or (method == "auto" and _has_umap()):
    import umap  # pylint: disable=g-import-not-at-top
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, round(perplexity)),
                        random_state=seed)
    return np.asarray(reducer.fit_transform(features)), "umap"
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  tsne = TSNE(n_components=2, perplexity=perplexity, init="pca",
              learning_rate="auto", random_state=seed)
  return np.asarray(tsne.fit_transform(features)), "tsne"


def similarity_matrix(z: np.ndarray) -> np.ndarray:
  """Cosine similarities of all views of a batch, ordered view-major.

  Args:
    z: float [N, V, d], the V views of N images.

  Returns:
    float64 [V*N, V*N]; row v*N + i is view v of image i, so the positive
    pairs of image i sit at offsets of multiples of N from the diagonal.
  """
  n, v, d = z.shape
  rows = np.transpose(np.asarray(z, np.float64), (1, 0, 2)).reshape(v * n, d)
  rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
  return rows @ rows.T


def positive_mask(n: int, v: int) -> np.ndarray:
  """bool [V*N, V*N]: True where row and column are different views of one image."""
  image = np.tile(np.arange(n), v)
  return (image[:, None] == image[None, :]) & ~np.eye(v * n, dtype=bool)


# ------------------------------------------------------------- pictures ---

PICTURES_SUBDIR = "pictures"


def heatmap_batch(config: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """This host's part of the fixed heatmap batch, from the training pipeline.

  Args:
    config: the full configuration.

  Returns:
    {'images': float32 [n, V, H, W, 3], 'labels': int32 [n]}: the first
    batch of `viz.heatmap_batch` images that pretraining with `config.seed`
    would draw.
  """
  batches = data_lib.make_pretrain_iterator(
      config.data, config.aug, int(config.viz.heatmap_batch), config.seed)
  return next(batches)


class Pictures:
  """The pictures of one model: embedding map and similarity heatmap.

  Build it once (it compiles two inference functions on first use and keeps
  the heatmap batch fixed, so pictures of successive evaluations compare);
  call `write` at each evaluation, on every process.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, mesh,
               out_dir: str, writer: Any = None):
    """Validates `config.viz` and prepares the inputs.

    Args:
      config: the full configuration (data, aug, eval, viz, seed).
      model: the SimCLR model (BatchNorm bound to the mesh axis).
      mesh: the device mesh.
      out_dir: directory of the PNG files.
      writer: a clu MetricWriter for the TensorBoard images (or None).
    """
    check_viz_config(config.viz, jax.device_count())
    self.config, self.mesh = config, mesh
    self.out_dir, self.writer = out_dir, writer
    self._h = make_apply_fn(model, mesh, "h")
    # z as the loss sees it: BatchNorm on the statistics of the batch.
    self._z = make_apply_fn(model, mesh, "z", train=True)
    self._batch = heatmap_batch(config)

  def compute(self, variables: Any, step: int) -> Dict[str, Any]:
    """Computes both pictures (collectives on every process).

    Args:
      variables: replicated model variables.
      step: training step, for the titles.

    Returns:
      {'similarity': float64 [VN, VN], 'num_views': V, 'similarity_heatmap':
      uint8 image, 'embedding_map': uint8 image (process 0 only),
      'positive_cosine' / 'negative_cosine': mean similarity of positive
      pairs / of different images}.
    """
    cfg, viz = self.config, self.config.viz
    px = int(viz.figure_px)
    images = parallel.host_to_global(self.mesh, self._batch["images"])
    z = _gather(self._z(variables, images))
    sim = similarity_matrix(z)
    n, v = z.shape[:2]
    pos = positive_mask(n, v)
    neg = ~pos & ~np.eye(len(sim), dtype=bool)
    out = {"similarity": sim, "num_views": v,
           "positive_cosine": float(sim[pos].mean()),
           "negative_cosine": float(sim[neg].mean())}
    out["similarity_heatmap"] = plots.plot_similarity(
        sim, v, f"cosine similarity of z: {n} images x {v} views, step {step}",
        px)
    split = cfg.data.eval_split
    batches = data_lib.make_eval_iterator(cfg.data, cfg.aug, split,
                                          cfg.eval.batch_size)
    total = data_lib.num_eval_batches(cfg.data, split, cfg.eval.batch_size)
    feats, labels = extract_features(self._h, variables, batches, self.mesh,
                                     int(viz.tsne_points), total)
    if jax.process_index() == 0:
      # The 2-D embedding is host work; only the process that writes does it.
      coords, method = embed_2d(feats, viz.embedding_method,
                                float(viz.tsne_perplexity), cfg.seed,
                                int(viz.tsne_threads))
      out["embedding_map"] = plots.plot_embedding(
          coords, labels, f"{METHOD_NAMES[method]} of h: {len(labels)} {split} "
          f"examples, step {step}", px)
    return out

  def write(self, step: int, variables: Any) -> Dict[str, str]:
    """Computes the pictures and writes PNGs and TensorBoard images.

    Args:
      step: training step (TensorBoard step and file-name suffix).
      variables: replicated model variables.

    Returns:
      {picture name: PNG path} on process 0; {} elsewhere.
    """
    out = self.compute(variables, step)
    if jax.process_index() > 0:
      return {}
    names = ("embedding_map", "similarity_heatmap")
    paths = {k: preview.save_png(
        os.path.join(self.out_dir, f"{k}_step{step}.png"), out[k])
             for k in names}
    if self.writer is not None:
      self.writer.write_images(step, {k: out[k][None] for k in names})
      self.writer.write_scalars(step, {
          "viz/positive_cosine": out["positive_cosine"],
          "viz/negative_cosine": out["negative_cosine"]})
    logging.info("Pictures at step %d: positive-pair cosine %.3f, other "
                 "pairs %.3f; %s", step, out["positive_cosine"],
                 out["negative_cosine"], ", ".join(paths.values()))
    return paths


def start_pretraining(config: ml_collections.ConfigDict, model, mesh,
                      workdir: str, writer: Any,
                      step: int = 0) -> Optional[Pictures]:
  """Pretraining hook: the augmentation grid now, a `Pictures` for later.

  Args:
    config: the full configuration.
    model: the SimCLR model.
    mesh: the device mesh.
    workdir: the run directory (PNGs go to `<workdir>/pictures`).
    writer: the run's clu MetricWriter.
    step: the step training starts from (TensorBoard step of the grid).

  Returns:
    The `Pictures` to call at each evaluation, or None when `viz.enabled`
    is off.
  """
  if not config.viz.enabled:
    return None
  out_dir = os.path.join(workdir, PICTURES_SUBDIR)
  pictures = Pictures(config, model, mesh, out_dir, writer)
  if jax.process_index() == 0:
    preview.write_preview(config, writer,
                          os.path.join(out_dir, "augmentations.png"), step)
  return pictures


# -------------------------------------------------------------- command ---


def _load(config, export_dir: str, workdir: str, mesh):
  """(config, model, replicated variables, step) of an export or a run."""
  # pylint: disable=g-import-not-at-top
  from simclr_jax import checkpoint
  from simclr_jax import config as config_lib
  from simclr_jax import train
  from simclr_jax.models import build_model
  # pylint: enable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  if export_dir:
    variables, meta = checkpoint.load_export(export_dir)
    config.data.image_size = int(meta["image_size"])  # the export's input
    model = build_model(meta["model"], int(meta["num_classes"]),
                        axis_name=AXIS)
    step = int(meta.get("extra", {}).get("step", 0) or 0)
    return config, model, parallel.replicate(mesh, variables), step
  # The newest checkpoint of a pretraining run made with `config`.
  info = data_lib.dataset_info(config.data)
  sched = config_lib.derive_schedule(
      config, info.num_examples[config.data.train_split])
  model, _, _, state, _ = train.build_pretrain(config, info.num_classes,
                                               sched, mesh)
  ckpt = checkpoint.Checkpointer(workdir, config.train.keep_checkpoints)
  step = ckpt.latest_step()
  if step is None:
    raise ValueError(f"--workdir={workdir!r} holds no checkpoint")
  state = ckpt.restore(step, state)
  ckpt.close()
  return config, model, state.variables, step


def run_on_saved(config: ml_collections.ConfigDict, out_dir: str,
                 export_dir: str = "", workdir: str = "") -> Dict[str, str]:
  """Writes the pictures of an export or of a run's newest checkpoint.

  The embedding map and the similarity heatmap go to `out_dir` as PNGs and as
  TensorBoard images.

  Args:
    config: the configuration naming the dataset, augmentations and `viz`
      (for an export, the input size is taken from the export).
    out_dir: directory for the PNGs and the TensorBoard events.
    export_dir: a `simclr_jax.checkpoint.save_export` directory, or ''.
    workdir: a pretraining run directory (used when `export_dir` is '').

  Returns:
    {picture name: PNG path} on process 0.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if bool(export_dir) == bool(workdir):
    raise ValueError(f"--export={export_dir!r}, --workdir={workdir!r}: give "
                     "exactly one of them.")
  mesh = parallel.make_mesh()
  config, model, variables, step = _load(config, export_dir, workdir, mesh)
  writer = metric_writers.create_default_writer(
      out_dir, just_logging=jax.process_index() > 0)
  names = Pictures(config, model, mesh, out_dir, writer).write(step, variables)
  writer.flush()
  return names


def main(argv) -> None:
  """Writes the pictures of --export or --workdir to --out_dir."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for path in run_on_saved(fv.config, fv.out_dir, fv.export,
                           fv.workdir).values():
    print(f"wrote {path}")


if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from absl import app as _app
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Configuration file (data, "
                                  "aug, eval, viz).", lock_config=True)
  flags.DEFINE_string("export", "", "export directory to visualise, or ...")
  flags.DEFINE_string("workdir", "", "... a pretraining run (newest checkpoint)")
  flags.DEFINE_string("out_dir", None, "directory for PNGs and TensorBoard")
  flags.mark_flags_as_required(["config", "out_dir"])
  _app.run(main)
