"""The sharded weighted kNN equals a brute-force float64 NumPy search."""

import jax
import numpy as np
import pytest

from simclr_jax.evals import knn
from simclr_jax import parallel

pytestmark = pytest.mark.quick


def _brute_force(bank, bank_labels, queries, k, temperature, num_classes):
  """Direct transcription: cosine similarity, k largest, exp(s/T) votes."""
  b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  sims = q @ b.T
  scores = np.zeros((len(queries), num_classes))
  for i in range(len(queries)):
    nearest = np.argsort(-sims[i])[:k]
    for j in nearest:
      scores[i, bank_labels[j]] += np.exp(sims[i, j] / temperature)
  return scores


@pytest.mark.parametrize("num_devices,k", [(8, 20), (1, 20), (8, 200)])
def test_knn_scores_match_brute_force(num_devices, k):
  rng = np.random.default_rng(num_devices + k)
  # 101 bank rows: not a multiple of 8, so the bank is padded on devices;
  # k=200 exceeds the bank, so every row votes.
  bank = rng.normal(size=(101, 16))
  labels = rng.integers(0, 5, size=101)
  queries = rng.normal(size=(37, 16))
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  got = knn.knn_scores(bank, labels, queries, k=k, temperature=0.1,
                       num_classes=5, mesh=mesh, chunk=16)
  want = _brute_force(bank, labels, queries, k, 0.1, 5)
  np.testing.assert_allclose(got, want, rtol=2e-4)
  acc = knn.accuracy(got, np.argmax(want, 1))  # same argmax as brute force
  assert acc["top1"] == 1.0 and acc["num_examples"] == 37


def test_accuracy_counts_top1_and_top5():
  scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
  labels = np.array([1, 2, 0])
  acc = knn.accuracy(scores, labels, top_k=2)
  assert acc["top1"] == pytest.approx(1 / 3)
  # Row 1: top-2 is {0, 1 or 2 (tie -> lower class 1)}; row 2: {2, 1}.
  assert acc["top5"] == pytest.approx(1 / 3)


def test_invalid_k_is_rejected():
  mesh = parallel.make_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match="k >= 1"):
    knn.knn_scores(np.ones((3, 2)), np.zeros(3, int), np.ones((1, 2)), 0, 0.1,
                   2, mesh)
