"""The L-BFGS logistic regression reaches scikit-learn's optimum; the probe picks L2 on validation."""

import numpy as np
import pytest
from sklearn import linear_model

from configs import digits
from simclr_jax.evals import fast_probe


def _problem(seed=0, n=120, d=6, c=3):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d)) * 1.5
  y = rng.integers(0, c, size=n)
  x = centers[y] + rng.normal(size=(n, d))
  return x.astype(np.float32), y.astype(np.int32)


@pytest.mark.quick
@pytest.mark.parametrize("l2", [1e-2, 1e-1])
def test_fit_matches_sklearn_multinomial_logistic_regression(l2):
  x, y = _problem()
  params, (iters, gnorm) = fast_probe.fit_logistic(
      x, y, l2, num_classes=3, max_iters=500, tol=1e-6)
  # sklearn minimises 0.5||W||^2 + C sum_i CE_i: the same optimum for
  # C = 1 / (n * l2) (intercept unpenalised in both).
  ref = linear_model.LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10,
                                        max_iter=10_000).fit(
                                            x.astype(np.float64), y)
  np.testing.assert_allclose(np.asarray(params["w"]).T, ref.coef_, atol=2e-3)
  np.testing.assert_allclose(np.asarray(params["b"]), ref.intercept_,
                             atol=2e-3)
  assert float(gnorm) < 1e-4 and int(iters) < 500


def test_fast_probe_chooses_l2_on_validation_and_scores_eval():
  x, y = _problem(seed=1, n=200)
  x_ev, y_ev = _problem(seed=2, n=90)
  config = digits.get_config("tiny")
  config.eval.probe_l2_grid = (1e-4, 1e-2, 1.0)
  config.eval.probe_standardize = False
  out = fast_probe.fast_probe(config, {"train": (x, y), "eval": (x_ev, y_ev)},
                              num_classes=3)
  best = max(out["val_top1"].values())
  assert out["val_top1"][str(out["l2"])] == best
  # Independent refit on all labelled examples with the chosen strength.
  ref = linear_model.LogisticRegression(C=1.0 / (len(y) * out["l2"]),
                                        tol=1e-10, max_iter=10_000).fit(x, y)
  assert out["top1"] == pytest.approx(np.mean(ref.predict(x_ev) == y_ev))
  assert out["num_examples"] == 90 and out["num_train"] == 200


@pytest.mark.quick
def test_bad_grid_is_rejected():
  x, y = _problem()
  config = digits.get_config("tiny")
  config.eval.probe_l2_grid = ()
  with pytest.raises(ValueError, match="probe_l2_grid"):
    fast_probe.fast_probe(config, {"train": (x, y), "eval": (x, y)}, 3)
