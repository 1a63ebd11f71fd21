"""Tests of the contrastive losses against float64 NumPy transcriptions.

The references below are written from the papers' formulas with explicit
loops over anchors, independently of the vectorised library code.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from simclr_jax import losses
from simclr_jax import parallel


# ---------------------------------------------------------------------------
# Float64 NumPy references.
# ---------------------------------------------------------------------------


def _np_sim(z):
  """Cosine similarities of the image-major flattened rows, float64."""
  x = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  return x @ x.T


def np_nt_xent_paper(z, tau):
  """SimCLR eq. (1) and L = 1/2N sum_k [l(2k-1,2k) + l(2k,2k-1)], V = 2."""
  s = _np_sim(z)
  two_n = s.shape[0]

  def ell(i, j):
    denom = sum(np.exp(s[i, k] / tau) for k in range(two_n) if k != i)
    return -np.log(np.exp(s[i, j] / tau) / denom)

  # 0-based: rows 2k and 2k+1 are the two views of image k.
  total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k)
              for k in range(two_n // 2))
  return total / two_n


def np_contrastive_metrics(z, tau):
  """contrast_acc_all_columns and contrast_entropy, positives = same image."""
  s = _np_sim(z)
  views = z.shape[1]
  accs, ents = [], []
  for i in range(s.shape[0]):
    others = [k for k in range(s.shape[0]) if k != i]
    best = others[int(np.argmax(s[i, others]))]
    accs.append(float(best // views == i // views))
    p = np.exp(s[i, others] / tau)
    p /= p.sum()
    ents.append(-np.sum(p * np.log(p)))
  return np.mean(accs), np.mean(ents)


def np_supcon(z, labels, tau, variant="out", base_temperature=None):
  """Khosla et al. 2020, eq. (2) (L_out) and eq. (3) (L_in)."""
  s = _np_sim(z)
  lab = np.repeat(np.asarray(labels), z.shape[1])
  rows = s.shape[0]
  per_anchor = []
  for i in range(rows):
    denom = sum(np.exp(s[i, a] / tau) for a in range(rows) if a != i)
    positives = [p for p in range(rows) if p != i and lab[p] == lab[i]]
    if not positives:
      continue
    probs = np.array([np.exp(s[i, p] / tau) / denom for p in positives])
    if variant == "out":
      per_anchor.append(-np.mean(np.log(probs)))
    else:
      per_anchor.append(-np.log(np.mean(probs)))
  loss = np.mean(per_anchor) if per_anchor else 0.0
  if base_temperature is not None:
    loss *= tau / base_temperature
  return loss


def np_multi_positive_nt_xent(z, tau):
  """Mean over anchors of the mean over positives of -log p_ip."""
  s = _np_sim(z)
  views = z.shape[1]
  rows = s.shape[0]
  total = 0.0
  for i in range(rows):
    denom = sum(np.exp(s[i, k] / tau) for k in range(rows) if k != i)
    pos = [p for p in range(rows) if p != i and p // views == i // views]
    total += np.mean([-np.log(np.exp(s[i, p] / tau) / denom) for p in pos])
  return total / rows


def np_nt_logistic(z, tau, balance=True):
  s = _np_sim(z)
  views = z.shape[1]
  rows = s.shape[0]
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
  total = 0.0
  for i in range(rows):
    pos = [p for p in range(rows) if p != i and p // views == i // views]
    neg = [q for q in range(rows) if q // views != i // views]
    pos_term = np.mean([-np.log(sigmoid(s[i, p] / tau)) for p in pos])
    neg_terms = [-np.log(sigmoid(-s[i, q] / tau)) for q in neg]
    total += pos_term + (np.mean(neg_terms) if balance else np.sum(neg_terms))
  return total / rows


def np_margin_triplet(z, m):
  s = _np_sim(z)
  views = z.shape[1]
  rows = s.shape[0]
  total = 0.0
  for i in range(rows):
    pos = [p for p in range(rows) if p != i and p // views == i // views]
    neg = [q for q in range(rows) if q // views != i // views]
    total += np.mean([max(s[i, q] - s[i, p] + m, 0.0)
                      for p in pos for q in neg])
  return total / rows


def _z(seed, n, views, dim=8):
  return np.random.default_rng(seed).normal(size=(n, views, dim)).astype(
      np.float32)


# ---------------------------------------------------------------------------
# Single-device values against the references.
# ---------------------------------------------------------------------------


@pytest.mark.quick
@pytest.mark.parametrize("n,tau", [(2, 0.05), (5, 0.1), (8, 0.5), (3, 1.0)])
def test_nt_xent_matches_paper_formula(n, tau):
  z = _z(n, n, 2)
  loss, metrics = losses.nt_xent(jnp.asarray(z), tau)
  np.testing.assert_allclose(loss, np_nt_xent_paper(z, tau), rtol=1e-5)
  acc, ent = np_contrastive_metrics(z, tau)
  np.testing.assert_allclose(metrics["contrast_acc_all_columns"], acc,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["contrast_entropy"], ent, rtol=1e-4,
                             atol=1e-6)


@pytest.mark.quick
@pytest.mark.parametrize("views,tau", [(3, 0.1), (4, 0.5)])
def test_nt_xent_multi_view(views, tau):
  z = _z(10 + views, 4, views)
  loss, metrics = losses.nt_xent(jnp.asarray(z), tau)
  np.testing.assert_allclose(loss, np_multi_positive_nt_xent(z, tau),
                             rtol=1e-5)
  acc, ent = np_contrastive_metrics(z, tau)
  np.testing.assert_allclose(metrics["contrast_acc_all_columns"], acc,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics["contrast_entropy"], ent, rtol=1e-4)
  # Equals SupCon L_out with one label per image.
  sup, _ = losses.supcon(jnp.asarray(z), jnp.arange(4), tau)
  np.testing.assert_allclose(loss, sup, rtol=1e-6)


@pytest.mark.quick
def test_nt_xent_gradient_matches_finite_differences():
  z = _z(7, 3, 2, dim=4)
  tau = 0.2
  grad = jax.grad(lambda x: losses.nt_xent(x, tau)[0])(jnp.asarray(z))
  eps = 1e-6
  ref = np.zeros(z.shape)
  z64 = z.astype(np.float64)
  for idx in np.ndindex(z.shape):
    plus, minus = z64.copy(), z64.copy()
    plus[idx] += eps
    minus[idx] -= eps
    ref[idx] = (np_nt_xent_paper(plus, tau) -
                np_nt_xent_paper(minus, tau)) / (2 * eps)
  np.testing.assert_allclose(grad, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.quick
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("views,labels", [
    (2, [0, 1, 0, 2, 1, 0]),
    (3, [4, 4, 1, 7, 1]),
    (1, [0, 1, 0, 2, 1, 3]),  # Classes 2 and 3 are singletons.
])
def test_supcon_matches_reference(variant, views, labels):
  labels = np.asarray(labels, np.int32)
  z = _z(len(labels) * views, len(labels), views)
  loss, metrics = losses.supcon(jnp.asarray(z), jnp.asarray(labels), 0.1,
                                variant=variant)
  np.testing.assert_allclose(loss, np_supcon(z, labels, 0.1, variant),
                             rtol=1e-5)
  has_pos = [np.sum(np.repeat(labels, views) == l) > 1
             for l in np.repeat(labels, views)]
  np.testing.assert_allclose(metrics["positive_anchor_frac"],
                             np.mean(has_pos), rtol=1e-6)


def test_supcon_base_temperature():
  labels = np.array([0, 1, 1, 0], np.int32)
  z = _z(3, 4, 2)
  loss, _ = losses.supcon(jnp.asarray(z), jnp.asarray(labels), 0.1,
                          base_temperature=0.07)
  np.testing.assert_allclose(loss, np_supcon(z, labels, 0.1, "out", 0.07),
                             rtol=1e-5)


@pytest.mark.quick
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_supcon_distinct_labels_equals_nt_xent(tau):
  z = _z(21, 6, 2)
  sup, sup_metrics = losses.supcon(jnp.asarray(z), jnp.arange(6) * 3, tau)
  np.testing.assert_allclose(sup, np_nt_xent_paper(z, tau), rtol=1e-5)
  ntx, ntx_metrics = losses.nt_xent(jnp.asarray(z), tau)
  np.testing.assert_allclose(sup, ntx, rtol=1e-6)
  np.testing.assert_allclose(sup_metrics["contrast_acc_all_columns"],
                             ntx_metrics["contrast_acc_all_columns"],
                             rtol=1e-6)


@pytest.mark.quick
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_singletons_finite(dtype, variant):
  z = jnp.asarray(_z(5, 6, 1), dtype)
  fn = lambda x, lab: losses.supcon(x, lab, 0.05, variant=variant)[0]
  # Some anchors without positives: finite loss and gradient.
  some = jnp.array([0, 1, 0, 2, 3, 4])
  loss, grad = jax.value_and_grad(fn)(z, some)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  # No anchor has a positive: the loss and its gradient are exactly zero.
  loss, grad = jax.value_and_grad(fn)(z, jnp.arange(6))
  assert float(loss) == 0.0
  assert not np.any(np.asarray(grad, np.float32))


@pytest.mark.quick
@pytest.mark.parametrize("views,tau,balance", [(2, 0.2, True), (3, 0.5, True),
                                               (2, 1.0, False)])
def test_nt_logistic_matches_reference(views, tau, balance):
  z = _z(31 + views, 5, views)
  loss, metrics = losses.nt_logistic(jnp.asarray(z), tau,
                                     balance_negatives=balance)
  np.testing.assert_allclose(loss, np_nt_logistic(z, tau, balance),
                             rtol=1e-5)
  acc, _ = np_contrastive_metrics(z, tau)
  np.testing.assert_allclose(metrics["contrast_acc_all_columns"], acc,
                             rtol=1e-6)


@pytest.mark.quick
@pytest.mark.parametrize("views,margin", [(2, 0.5), (3, 1.0), (2, 0.0)])
def test_margin_triplet_matches_reference(views, margin):
  z = _z(41 + views, 5, views)
  loss, metrics = losses.margin_triplet(jnp.asarray(z), margin)
  np.testing.assert_allclose(loss, np_margin_triplet(z, margin), rtol=1e-5,
                             atol=1e-7)
  s = _np_sim(z)
  same = np.equal.outer(np.arange(5 * views) // views,
                        np.arange(5 * views) // views)
  pos = same & ~np.eye(5 * views, dtype=bool)
  np.testing.assert_allclose(
      metrics["pos_sim"],
      np.mean(np.sum(s * pos, 1) / np.sum(pos, 1)), rtol=1e-5)
  np.testing.assert_allclose(
      metrics["neg_sim"],
      np.mean(np.sum(s * ~same, 1) / np.sum(~same, 1)), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Eight devices against one.
# ---------------------------------------------------------------------------


def _mapped_value_and_grad(loss_fn, z, *extra):
  """pmean'd loss and metrics, and per-device gradients, on 8 devices."""
  mesh = parallel.make_mesh(jax.devices()[:8])

  def per_device(z, *extra):
    (loss, metrics), grad = jax.value_and_grad(
        lambda x: loss_fn(x, *extra, axis_name=parallel.AXIS),
        has_aux=True)(z)
    loss, metrics = jax.lax.pmean((loss, metrics), parallel.AXIS)
    return loss, metrics, grad

  specs = (P(parallel.AXIS),) * (1 + len(extra))
  fn = jax.jit(parallel.per_replica(per_device, mesh, in_specs=specs,
                                    out_specs=(P(), P(), P(parallel.AXIS))))
  sharding = NamedSharding(mesh, P(parallel.AXIS))
  args = [jax.device_put(jnp.asarray(a), sharding) for a in (z,) + extra]
  return fn(*args)


def _assert_same_as_one_device(loss_fn, z, *extra):
  """Asserts 8-device loss, metrics and gradients; returns the loss."""
  (loss1, metrics1), grad1 = jax.value_and_grad(
      lambda x: loss_fn(x, *extra), has_aux=True)(jnp.asarray(z))
  loss8, metrics8, grad8 = _mapped_value_and_grad(loss_fn, z, *extra)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  assert set(metrics8) == set(metrics1)
  for key in metrics1:
    np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-5,
                               atol=1e-6, err_msg=key)
  # Under pmap semantics the mapped gradient is that of sum_d loss_d, i.e.
  # 8 x the gradient of the global mean loss.
  assert grad8.shape == z.shape
  np.testing.assert_allclose(grad8, 8 * np.asarray(grad1), rtol=1e-5,
                             atol=1e-6)
  return loss8


@pytest.mark.quick
@pytest.mark.parametrize("views", [2, 3])
def test_nt_xent_eight_devices(views):
  z = _z(51 + views, 16, views)
  _assert_same_as_one_device(
      functools.partial(losses.nt_xent, temperature=0.1), z)


@pytest.mark.parametrize("variant,views", [("out", 2), ("in", 1)])
def test_supcon_eight_devices(variant, views):
  # 2 images per device; classes 0 and 1 span several devices, 5 and 6 are
  # split across two, and with V = 1 the singletons 2, 3, 4 leave devices
  # with different numbers of anchors that have positives.
  labels = np.array([0, 1, 0, 2, 1, 3, 5, 0, 6, 1, 4, 0, 5, 1, 6, 0],
                    np.int32)
  z = _z(61 + views, 16, views)
  fn = functools.partial(losses.supcon, temperature=0.1, variant=variant)
  loss8 = _assert_same_as_one_device(fn, z, labels)
  np.testing.assert_allclose(loss8, np_supcon(z, labels, 0.1, variant),
                             rtol=1e-5)


@pytest.mark.quick
def test_nt_logistic_eight_devices():
  z = _z(71, 16, 2)
  _assert_same_as_one_device(
      functools.partial(losses.nt_logistic, temperature=0.2), z)


@pytest.mark.quick
def test_margin_triplet_eight_devices():
  z = _z(73, 16, 3)
  loss8 = _assert_same_as_one_device(
      functools.partial(losses.margin_triplet, margin=0.5), z)
  np.testing.assert_allclose(loss8, np_margin_triplet(z, 0.5), rtol=1e-5)


@pytest.mark.quick
@pytest.mark.parametrize("variant", ["out", "in"])
def test_supcon_eight_devices_four_views(variant):
  labels = np.array([0, 1, 0, 2, 1, 3, 5, 0, 6, 1, 4, 0, 5, 1, 6, 0],
                    np.int32)
  z = _z(75, 16, 4)
  fn = functools.partial(losses.supcon, temperature=0.1, variant=variant)
  loss8 = _assert_same_as_one_device(fn, z, labels)
  np.testing.assert_allclose(loss8, np_supcon(z, labels, 0.1, variant),
                             rtol=1e-5)


# ---------------------------------------------------------------------------
# Low precision, dispatch and bad input.
# ---------------------------------------------------------------------------


def test_nt_xent_bfloat16_at_low_temperature():
  z = _z(81, 8, 2, dim=16)
  fn = lambda x, **kw: losses.nt_xent(x, 0.05, **kw)[0]
  loss32 = fn(jnp.asarray(z))
  grad32 = jax.grad(fn)(jnp.asarray(z))
  # bfloat16 inputs with float32 logits lose only the input rounding;
  # bfloat16 logits also round the similarities (ulp ~ 0.4% of 1/tau).
  for kw, rtol in (({}, 2e-3), ({"logits_dtype": jnp.bfloat16}, 2e-2)):
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(z, jnp.bfloat16), **kw)
    grad = np.asarray(grad, np.float32)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(float(loss), loss32, rtol=rtol)
    cos = np.sum(grad * grad32) / (np.linalg.norm(grad) *
                                   np.linalg.norm(grad32))
    assert cos > 0.999, cos


@pytest.mark.quick
def test_for_config_dispatches_to_each_loss():
  """for_config(name) computes what the named function computes."""
  z, labels = jnp.asarray(_z(7, 4, 2)), jnp.array([0, 1, 0, 2])
  direct = {
      "nt_xent": losses.nt_xent(z, 0.3)[0],
      "supcon": losses.supcon(z, labels, 0.3, variant="in")[0],
      "nt_logistic": losses.nt_logistic(z, 0.3)[0],
      "margin_triplet": losses.margin_triplet(z, 0.7)[0]}
  assert set(losses.LOSSES) == set(direct)
  for name, want in direct.items():
    cfg = ml_collections.ConfigDict(dict(
        name=name, temperature=0.3, supcon_variant="in", margin=0.7,
        official_scale=False, base_temperature=0.0))
    got, _ = losses.for_config(cfg)(z, labels, None)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  cfg.name = "simclr"
  with pytest.raises(ValueError, match=r"loss\.name.*nt_xent.*'simclr'"):
    losses.for_config(cfg)

@pytest.mark.quick
def test_bad_input_raises():
  z = jnp.ones((4, 2, 8))
  with pytest.raises(ValueError, match="temperature"):
    losses.nt_xent(z, 0.0)
  with pytest.raises(ValueError, match=r"\[n, V, d\]"):
    losses.nt_xent(jnp.ones((4, 8)), 0.1)
  with pytest.raises(ValueError, match="V >= 2"):
    losses.nt_logistic(jnp.ones((4, 1, 8)), 0.1)
  with pytest.raises(ValueError, match="variant"):
    losses.supcon(z, jnp.arange(4), 0.1, variant="mid")
  with pytest.raises(ValueError, match="labels"):
    losses.supcon(z, jnp.arange(3), 0.1)
  with pytest.raises(ValueError, match="margin"):
    losses.margin_triplet(z, -1.0)
