"""The LAMB optimizer against a float64 NumPy transcription of its update."""

import numpy as np
import optax
import pytest

from configs import default
from simclr_jax import optim

pytestmark = pytest.mark.quick


def _lamb_reference(params, grads_per_step, lr, b1, b2, eps, wd):
  """LAMB (You et al. 2020, Algorithm 2) in float64 with the decay mask.

  Kernels get weight decay and the layer-wise trust ratio ||w|| / ||u||;
  biases get plain bias-corrected Adam steps.
  """
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    for k in p:
      g = grads[k].astype(np.float64)
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      u = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      if k == "kernel":
        u = u + wd * p[k]
        w_norm, u_norm = np.linalg.norm(p[k]), np.linalg.norm(u)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        u = ratio * u
      p[k] = p[k] - lr * u
  return p


def test_lamb_matches_the_float64_transcription():
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32)
            for k, v in params.items()} for _ in range(3)]
  cfg = default.get_config().optim
  cfg.name, cfg.weight_decay = "lamb", 0.01
  lr = 0.05
  tx = optim.make_optimizer(cfg, optax.constant_schedule(lr))
  state = tx.init(params)
  got = params
  for g in grads:
    updates, state = tx.update(g, state, got)
    got = optax.apply_updates(got, updates)
  want = _lamb_reference(params, grads, lr, cfg.b1, cfg.b2, cfg.eps, 0.01)
  for k in params:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-6,
                               atol=2e-7, err_msg=k)
  # optax.lamb as it comes adapts the bias too: the mask is what matches.
  stock = optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=0.01,
                     mask=optim.decay_mask)
  state, other = stock.init(params), params
  for g in grads:
    updates, state = stock.update(g, state, other)
    other = optax.apply_updates(other, updates)
  assert not np.allclose(np.asarray(other["bias"]), want["bias"], rtol=1e-3)
