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

During pretraining `PicturesEval` writes both at every evaluation (and the
augmentation grid at the start); `python -m simclr_jax.visualize` draws them
for an export or a run's newest checkpoint.
"""

import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from simclr_jax import config as config_lib
from simclr_jax import parallel
from simclr_jax.evals import base as evals_base
from simclr_jax.evals import features as features_lib
from simclr_jax.viz import plots

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
  for field in ("preview_images", "preview_views", "preview_tile_px"):
    if int(viz_cfg[field]) < 1:
      config_lib.fail(f"viz.{field}", viz_cfg[field], "must be >= 1")

  def fail(field, allowed):
    config_lib.fail(f"viz.{field}", viz_cfg[field], allowed)
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
    config_lib.fail("viz.tsne_perplexity", perplexity,
                    f"must be in (0, {n}), the number of points embedded")
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
  from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
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
               out_dir: str, writer: Any = None, labelled: bool = True):
    """Validates `config.viz` and prepares the inputs.

    Args:
      config: the full configuration (data, aug, eval, viz, seed).
      model: the SimCLR model (BatchNorm bound to the mesh axis).
      mesh: the device mesh.
      out_dir: directory of the PNG files.
      writer: a clu MetricWriter for the TensorBoard images (or None).
      labelled: colour the embedding map by class (False: one colour).
    """
    check_viz_config(config.viz, jax.device_count())
    self.config, self.mesh, self.labelled = config, mesh, labelled
    self.out_dir, self.writer = out_dir, writer
    self._h = features_lib.make_feature_step(
        features_lib.encoder_feature_fn(model), mesh)
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
    feats, labels = features_lib.extract(
        None, variables, cfg, split, self.mesh, max_points=int(viz.tsne_points),
        step_fn=self._h)
    if jax.process_index() == 0:
      # The 2-D embedding is host work; only the process that writes does it.
      coords, method = embed_2d(feats, viz.embedding_method,
                                float(viz.tsne_perplexity), cfg.seed,
                                int(viz.tsne_threads))
      out["embedding_map"] = plots.plot_embedding(
          coords, labels if self.labelled else None, f"{METHOD_NAMES[method]} of h: {len(labels)} {split} "
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
    from simclr_jax.data import preview  # pylint: disable=g-import-not-at-top
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


class PicturesEval(evals_base.Evaluator):
  """The pictures as an evaluator: the augmentation grid at the start, the
  embedding map and similarity heatmap at every evaluation and at the end.

  Reads `config.viz`, and the data settings, evaluation batch and seed the
  pictures are drawn with.
  """

  name = "pictures"
  periodic = True
  # The config it is given (registry.sliced).
  sections = ("viz", "data", "aug", "eval", "seed")

  def __init__(self, config: ml_collections.ConfigDict, model, mesh,
               workdir: str, labelled: bool = True):
    """Prepares the pictures; PNGs go to `<workdir>/pictures`."""
    self._config = config
    self._out_dir = os.path.join(workdir, PICTURES_SUBDIR)
    self._pictures = Pictures(config, model, mesh, self._out_dir,
                              labelled=labelled)

  def start(self, writer: Any, step: int) -> None:
    """Writes the augmentation grid (TensorBoard step `step`) on process 0."""
    if jax.process_index() == 0:
      from simclr_jax.data import preview  # pylint: disable=g-import-not-at-top
      preview.write_preview(self._config, writer,
                            os.path.join(self._out_dir, "augmentations.png"),
                            step)

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Dict[str, Any]:
    """Writes both pictures; returns {'paths': {name: PNG}} (process 0)."""
    self._pictures.writer = writer
    return {"paths": self._pictures.write(step, variables)}
