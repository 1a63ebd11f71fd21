"""Label-free signals of representation quality on held-out images.

With no labels there is no probe or kNN accuracy to watch, but the encoder
can still be seen to learn on images it does not train on. Each held-out
image gets two augmented views (the pretraining augmentation, with
randomness fixed per image, so successive evaluations compare the same
pairs); their projections z (inference mode, L2-normalised) give:

* alignment (Wang & Isola 2020): mean ||z1 - z2||^2 over positive pairs;
  0 is perfect, 4 the worst. Falls as views of one image move together.
* uniformity (Wang & Isola 2020): log mean exp(-2 ||zi - zj||^2) over pairs
  of different images (first views); -4 at best on a large sphere, 0 when
  everything collapses to one point. Falls as images spread out.
* contrastive top-1: the fraction of the 2N views whose most similar other
  view (cosine, among all 2N - 1) is their own positive, the retrieval the
  NT-Xent loss trains for, measured on held-out pairs.
"""

from typing import Any, Dict, Optional

import ml_collections
import numpy as np

from simclr_jax.evals import base as evals_base
from simclr_jax.evals import features as features_lib


def projection_feature_fn(model) -> features_lib.FeatureFn:
  """(variables, images) -> z, the projection head's output, inference mode."""
  def fn(variables, images):
    return model.apply(variables, images, False)["z"]
  return fn


def heldout_signals(z1: np.ndarray, z2: np.ndarray) -> Dict[str, float]:
  """Alignment, uniformity and contrastive top-1 of positive pairs.

  Args:
    z1: float [N, d] first views (N >= 2).
    z2: float [N, d] second views of the same images, same order.

  Returns:
    {'alignment', 'uniformity', 'contrastive_top1', 'num_examples'}.
  """
  def unit(z):
    z = np.asarray(z, np.float64)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
  z1, z2 = unit(z1), unit(z2)
  n = len(z1)
  alignment = float(np.mean(np.sum((z1 - z2) ** 2, axis=1)))
  sq = np.maximum(2.0 - 2.0 * z1 @ z1.T, 0.0)  # ||a - b||^2 of unit vectors
  off = ~np.eye(n, dtype=bool)
  uniformity = float(np.log(np.mean(np.exp(-2.0 * sq[off]))))
  z = np.concatenate([z1, z2])
  sim = z @ z.T
  np.fill_diagonal(sim, -np.inf)
  positive = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
  top1 = float(np.mean(np.argmax(sim, axis=1) == positive))
  return {"alignment": alignment, "uniformity": uniformity,
          "contrastive_top1": top1, "num_examples": int(n)}


class SignalsEval(evals_base.Evaluator):
  """The held-out signals as a periodic evaluator (reads `config.eval`).

  Uses at most `eval.signal_max_images` images of the eval split (for an
  image folder without its own eval folder, the held-out fraction).
  """

  name = "heldout"
  periodic = True
  # The config it is given (registry.sliced); the seed draws the two views.
  sections = ("eval", "data", "aug", "seed")

  def __init__(self, config: ml_collections.ConfigDict, model, mesh):
    """Compiles nothing yet; the z step is built on first use."""
    self._config, self._mesh = config, mesh
    self._step = features_lib.make_feature_step(projection_feature_fn(model),
                                                mesh)

  def run(self, variables: Any, step: int, writer: Any = None
          ) -> Optional[Dict[str, Any]]:
    """The signals of `variables` on the held-out pairs (every process)."""
    del step, writer
    cfg = self._config
    limit = int(cfg.eval.signal_max_images)
    views = [features_lib.extract(None, variables, cfg, cfg.data.eval_split,
                                  self._mesh, max_points=limit,
                                  step_fn=self._step, view=v)[0]
             for v in (0, 1)]
    if len(views[0]) < 2:
      return None  # no pair of different images to compare
    return heldout_signals(*views)
