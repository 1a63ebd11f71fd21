"""Contrastive losses over local projections with globally gathered columns.

Every loss takes the projections `z` of one device, shape [n, V, d] (n local
images, V views each), and an optional axis name. With `axis_name=None` it runs
on one device without collectives. With `axis_name=parallel.AXIS` it is called
inside `parallel.per_replica` (pmap semantics): the normalised projections are
all-gathered (`tiled=True`) and each device computes only its local rows
against all global columns, an (n*V) x (N*V) block, so memory is O(n*N).
The gathered tensor is not stop-gradient'ed: the transpose of the all-gather is
a reduce-scatter, which hands every device the gradient of its own rows as
seen by all devices' losses.

Rows are flattened image-major (row = image * V + view). The loss of a device
is a mean over its local anchors, normalised so that `pmean` over devices
equals the loss of the whole global batch on one device. Metrics are per
device; the caller pmeans them.

`for_config` is the one dispatch from `config.loss` to a loss: the train step
differentiates exactly what it returns.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Metrics = Dict[str, jax.Array]
LossOutput = Tuple[jax.Array, Metrics]

# Allowed values of `loss.name`.
LOSSES = ("nt_xent", "supcon", "nt_logistic", "margin_triplet")
# Allowed values of the SupCon `variant` (mean outside / inside the log).
SUPCON_VARIANTS = ("out", "in")
# What the train step calls: (z [n, V, d], labels [n], axis_name) -> output.
ConfiguredLoss = Callable[[jax.Array, jax.Array, Optional[str]], LossOutput]


class _Block(NamedTuple):
  """Local rows against global columns."""
  rows: jax.Array       # [n*V, d] normalised local projections.
  sim: jax.Array        # [n*V, N*V] cosine similarities.
  not_self: jax.Array   # [n*V, N*V] False on each row's own column.
  row_image: jax.Array  # [n*V] global image index of each row.
  col_image: jax.Array  # [N*V] global image index of each column.


def _check_z(z: jax.Array, min_views: int) -> None:
  if z.ndim != 3:
    raise ValueError(f"z must have shape [n, V, d]; got shape {z.shape}.")
  if z.shape[1] < min_views:
    raise ValueError(f"z must have V >= {min_views} views (axis 1); got "
                     f"shape {z.shape}.")


def _check_positive(name: str, value: Any) -> None:
  # Traced values cannot be checked; config values are Python numbers.
  if isinstance(value, (int, float)) and not value > 0:
    raise ValueError(f"{name} must be > 0; got {value!r}.")


def _l2_normalize(x: jax.Array) -> jax.Array:
  # Floor the squared norm so that an all-zero vector maps to zero, not NaN.
  floor = jnp.finfo(x.dtype).eps ** 2
  return x * jax.lax.rsqrt(
      jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), floor))


def _gather(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  if axis_name is None:
    return x
  return jax.lax.all_gather(x, axis_name, tiled=True)


def _similarity_block(z: jax.Array, axis_name: Optional[str],
                      dtype: Any) -> _Block:
  """Normalises, gathers and builds the local x global similarity block."""
  n, views, dim = z.shape
  # Normalise in the wider of the two dtypes, then cast: bf16 inputs still
  # get float32 logits, and float32 inputs get an accurate norm.
  work = jnp.promote_types(z.dtype, dtype)
  rows = _l2_normalize(z.astype(work)).astype(dtype).reshape(n * views, dim)
  cols = _gather(rows, axis_name)
  sim = jnp.matmul(rows, cols.T)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * (
      n * views)
  row_id = offset + jnp.arange(n * views)
  col_id = jnp.arange(cols.shape[0])
  return _Block(rows=rows, sim=sim,
                not_self=row_id[:, None] != col_id[None, :],
                row_image=row_id // views, col_image=col_id // views)


def _same_image(block: _Block) -> jax.Array:
  return (block.row_image[:, None] == block.col_image[None, :]) & (
      block.not_self)


def _valid_mean(values: jax.Array, valid: jax.Array,
                axis_name: Optional[str]) -> jax.Array:
  """Per-device share of the mean over valid anchors of the global batch.

  Returns D * (local sum) / (global count), D the number of devices, so that
  the pmean over devices is exactly (global sum) / (global count) whatever the
  split of valid anchors between devices.
  """
  local_sum = jnp.sum(jnp.where(valid, values, 0))
  count = jnp.sum(valid)
  devices = 1
  if axis_name is not None:
    count = jax.lax.psum(count, axis_name)
    devices = jax.lax.axis_size(axis_name)
  return local_sum * devices / jnp.maximum(count, 1)


def _softmax_terms(logits: jax.Array, pos: jax.Array, not_self: jax.Array,
                   variant: str) -> Tuple[jax.Array, ...]:
  """Multi-positive cross-entropy terms of each anchor (row).

  Returns:
    (per-anchor loss, has-a-positive, top-1 hit, softmax entropy), each [n*V].
  """
  # A finite fill (half the dtype's lowest value) stays finite after the
  # max-subtraction in log_softmax, in float32, bfloat16 and float16 alike;
  # its probability underflows to exactly zero.
  fill = jnp.finfo(logits.dtype).min / 2
  masked = jnp.where(not_self, logits, fill)
  log_prob = jax.nn.log_softmax(masked, axis=-1)
  num_pos = jnp.sum(pos, axis=-1)
  valid = num_pos > 0
  safe_num = jnp.maximum(num_pos, 1).astype(logits.dtype)
  if variant == "out":
    per_anchor = -jnp.sum(jnp.where(pos, log_prob, 0), axis=-1) / safe_num
  else:
    pos_lse = jax.nn.logsumexp(jnp.where(pos, log_prob, fill), axis=-1)
    per_anchor = -(pos_lse - jnp.log(safe_num))
  per_anchor = jnp.where(valid, per_anchor, 0)
  top = jnp.argmax(masked, axis=-1)
  hit = jnp.take_along_axis(pos, top[:, None], axis=-1)[:, 0]
  entropy = -jnp.sum(
      jnp.where(not_self, jnp.exp(log_prob) * log_prob, 0), axis=-1)
  return per_anchor, valid, hit, entropy


def _accuracies(block: _Block, pos: jax.Array, views: int) -> Metrics:
  """Both contrastive top-1 accuracies, each named after what it measures.

  `contrast_acc_all_columns`: over every anchor, whether its highest non-self
  column (all N*V - 1 of them, every view) is a positive.
  `contrast_acc_cross_view`: the official TF2 `train/contrast_acc`
  (`metrics.update_pretrain_metrics_train` on `logits_ab`): anchors of the
  first view only, ranked against the N columns of the second view (its own
  positive among them); needs V >= 2. It is the easier task: the same-view
  columns, the hardest negatives, are not candidates.

  Args:
    block: the similarity block.
    pos: [n*V, N*V] positives of each row (non-self).
    views: V.

  Returns:
    Per-device means (the caller pmeans them).
  """
  lowest = jnp.finfo(block.sim.dtype).min

  def top1(candidates):
    top = jnp.argmax(jnp.where(candidates, block.sim, lowest), axis=-1)
    return jnp.take_along_axis(pos, top[:, None], axis=-1)[:, 0].astype(
        jnp.float32)

  out = {"contrast_acc_all_columns": jnp.mean(top1(block.not_self))}
  if views >= 2:
    # Local row ids start at a multiple of V, so id % V is the view.
    row_view = jnp.arange(block.sim.shape[0]) % views
    col_view = jnp.arange(block.sim.shape[1]) % views
    hit = top1(jnp.broadcast_to(col_view[None, :] == 1, block.sim.shape))
    first = row_view == 0
    out["contrast_acc_cross_view"] = jnp.sum(
        jnp.where(first, hit, 0)) / jnp.sum(first)
  return out


def nt_xent(z: jax.Array, temperature: float,
            axis_name: Optional[str] = None,
            logits_dtype: Any = jnp.float32) -> LossOutput:
  """NT-Xent, the SimCLR loss (Chen et al. 2020, eq. 1), with V >= 2 views.

  With s_ik the cosine similarity of flattened rows i and k and P(i) the other
  views of the image of i, the loss of anchor i is

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/tau) /
                                         sum_{k != i} exp(s_ik/tau) ),

  and the loss is the mean of l_i over all N*V anchors. For V = 2 this is the
  paper's L = 1/2N sum_k [l(2k-1, 2k) + l(2k, 2k-1)]. For V > 2 it is the
  mean over positives outside the log, i.e. SupCon L_out with labels = image
  ids. The official TF2 code minimises mean(loss_a + loss_b), twice this
  value: `for_config` with `loss.official_scale` returns that.

  Args:
    z: local projections [n, V, d], any float dtype.
    temperature: tau > 0.
    axis_name: mapped axis to gather over, or None on one device.
    logits_dtype: dtype of the similarities and logits.

  Returns:
    (loss, metrics): the loss averaged over local anchors; metrics
    `contrast_acc_all_columns`, `contrast_acc_cross_view` (see `_accuracies`)
    and `contrast_entropy` (mean entropy of the softmax over the non-self
    columns).
  """
  _check_z(z, 2)
  _check_positive("temperature", temperature)
  block = _similarity_block(z, axis_name, logits_dtype)
  pos = _same_image(block)
  per_anchor, _, _, entropy = _softmax_terms(
      block.sim / temperature, pos, block.not_self, "out")
  metrics = dict(_accuracies(block, pos, z.shape[1]),
                 contrast_entropy=jnp.mean(entropy))
  return jnp.mean(per_anchor), metrics


def supcon(z: jax.Array, labels: jax.Array, temperature: float,
           axis_name: Optional[str] = None, variant: str = "out",
           base_temperature: Optional[float] = None,
           logits_dtype: Any = jnp.float32) -> LossOutput:
  """Supervised contrastive loss (Khosla et al. 2020), V >= 1 views.

  The positives P(i) of anchor i are all other rows of the global batch whose
  image has the same label (its own other views included); A(i) = all rows
  but i. With log p_ip = s_ip/tau - log sum_{a in A(i)} exp(s_ia/tau):

    L_out(i) = -1/|P(i)| sum_{p in P(i)} log p_ip          (variant 'out')
    L_in(i)  = -log( 1/|P(i)| sum_{p in P(i)} p_ip )       (variant 'in')

  multiplied by tau / base_temperature when `base_temperature` is set (the
  SupContrast reference always multiplies, with base_temperature 0.07 by
  default): a constant factor, so the loss value and its gradient scale by
  exactly tau / base_temperature and the minimiser is unchanged; under SGD or
  LARS's untrusted parameters it acts as a learning-rate factor. The loss is
  the mean over the anchors of the *global* batch that have at least
  one positive; anchors without one contribute nothing (loss 0 if none has).
  Each device returns D * (local sum) / (global count of such anchors), so the
  pmean over devices is exactly the single-device value.

  Args:
    z: local projections [n, V, d].
    labels: local integer labels [n], one per image.
    temperature: tau > 0.
    axis_name: mapped axis to gather over, or None on one device.
    variant: 'out' (default, mean outside the log) or 'in'.
    base_temperature: optional tau_base > 0 of the reference implementation.
    logits_dtype: dtype of the similarities and logits.

  Returns:
    (loss, metrics): metrics `contrast_acc_with_positive` (over anchors with
    positives, same exact scheme as the loss: is the highest non-self column a
    positive), `contrast_acc_all_columns` and `contrast_acc_cross_view` (every
    anchor, see `_accuracies`; a positive is a same-label column),
    `contrast_entropy` and `positive_anchor_frac` (local fraction of anchors
    that have a positive).
  """
  _check_z(z, 1)
  _check_positive("temperature", temperature)
  if base_temperature is not None:
    _check_positive("base_temperature", base_temperature)
  if variant not in SUPCON_VARIANTS:
    raise ValueError(f"supcon variant must be one of {SUPCON_VARIANTS}; got "
                     f"{variant!r}.")
  if labels.shape != z.shape[:1]:
    raise ValueError(f"labels must have shape [n] = {z.shape[:1]}; got "
                     f"{labels.shape}.")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
  views = z.shape[1]
  block = _similarity_block(z, axis_name, logits_dtype)
  row_labels = jnp.repeat(labels, views)
  col_labels = jnp.repeat(_gather(labels, axis_name), views)
  pos = (row_labels[:, None] == col_labels[None, :]) & block.not_self
  per_anchor, valid, hit, entropy = _softmax_terms(
      block.sim / temperature, pos, block.not_self, variant)
  loss = _valid_mean(per_anchor, valid, axis_name)
  if base_temperature is not None:
    loss = loss * (temperature / base_temperature)
  metrics = dict(
      _accuracies(block, pos, views),
      contrast_acc_with_positive=_valid_mean(hit.astype(jnp.float32), valid,
                                             axis_name),
      contrast_entropy=jnp.mean(entropy),
      positive_anchor_frac=jnp.mean(valid.astype(jnp.float32)))
  return loss, metrics


def _pair_metrics(block: _Block, pos: jax.Array, neg: jax.Array,
                  views: int) -> Metrics:
  """Both top-1 accuracies and mean positive / negative cosine similarity."""
  sim = block.sim

  def row_mean(mask):
    return jnp.sum(jnp.where(mask, sim, 0), axis=-1) / jnp.maximum(
        jnp.sum(mask, axis=-1), 1)

  return dict(_accuracies(block, pos, views),
              pos_sim=jnp.mean(row_mean(pos)),
              neg_sim=jnp.mean(row_mean(neg)))


def nt_logistic(z: jax.Array, temperature: float,
                axis_name: Optional[str] = None,
                balance_negatives: bool = True,
                logits_dtype: Any = jnp.float32) -> LossOutput:
  """NT-Logistic loss (SimCLR v1, Table 2), with V >= 2 views.

  The paper's objective log sigma(s+/tau) + log sigma(-s-/tau), negated and
  taken over every positive P(i) and every negative N(i) (all rows of other
  images in the global batch) of anchor i:

    l_i = 1/|P(i)| sum_{p} -log sigma(s_ip/tau)
          + w sum_{q in N(i)} -log sigma(-s_iq/tau),

  with w = 1/|N(i)| when `balance_negatives` (the negatives are reweighted so
  that they weigh as much in total as the positive, since they outnumber it
  2(N-1) to 1) and w = 1 otherwise. The loss is the mean of l_i over anchors.

  Args:
    z: local projections [n, V, d].
    temperature: tau > 0.
    axis_name: mapped axis to gather over, or None on one device.
    balance_negatives: average (True) or sum (False) the negative terms.
    logits_dtype: dtype of the similarities and logits.

  Returns:
    (loss, metrics): metrics `contrast_acc_all_columns`,
    `contrast_acc_cross_view`, `pos_sim`, `neg_sim` (mean cosine
    similarities).
  """
  _check_z(z, 2)
  _check_positive("temperature", temperature)
  block = _similarity_block(z, axis_name, logits_dtype)
  pos = _same_image(block)
  neg = block.not_self & ~pos
  logits = block.sim / temperature
  pos_term = jnp.sum(jnp.where(pos, jax.nn.softplus(-logits), 0), axis=-1)
  pos_term = pos_term / jnp.sum(pos, axis=-1)
  neg_term = jnp.sum(jnp.where(neg, jax.nn.softplus(logits), 0), axis=-1)
  if balance_negatives:
    neg_term = neg_term / jnp.maximum(jnp.sum(neg, axis=-1), 1)
  loss = jnp.mean(pos_term + neg_term)
  return loss, _pair_metrics(block, pos, neg, z.shape[1])


def margin_triplet(z: jax.Array, margin: float,
                   axis_name: Optional[str] = None,
                   logits_dtype: Any = jnp.float32) -> LossOutput:
  """Margin triplet loss (SimCLR v1, Table 2), with V >= 2 views.

  The paper's objective -max(s- - s+ + m, 0) on cosine similarities, negated
  and averaged over every (positive, negative) pair of anchor i:

    l_i = 1/(|P(i)| |N(i)|) sum_{p in P(i)} sum_{q in N(i)}
          max(s_iq - s_ip + m, 0),

  N(i) being all rows of other images in the global batch. The loss is the
  mean of l_i over anchors. No negative mining.

  Args:
    z: local projections [n, V, d].
    margin: m >= 0.
    axis_name: mapped axis to gather over, or None on one device.
    logits_dtype: dtype of the similarities.

  Returns:
    (loss, metrics): metrics as `nt_logistic`'s.
  """
  _check_z(z, 2)
  if isinstance(margin, (int, float)) and not margin >= 0:
    raise ValueError(f"margin must be >= 0; got {margin!r}.")
  n, views, _ = z.shape
  block = _similarity_block(z, axis_name, logits_dtype)
  pos = _same_image(block)
  neg = block.not_self & ~pos
  # The V-1 positives of a row are the other views of its image, all local:
  # take them from the local [n, V, V] block instead of the global one.
  local = block.rows.reshape(n, views, -1)
  within = jnp.einsum("nvd,nwd->nvw", local, local)
  others = np.array([[w for w in range(views) if w != v]
                     for v in range(views)])
  pos_sim = within[:, np.arange(views)[:, None], others].reshape(
      n * views, views - 1)
  hinge = jax.nn.relu(block.sim[:, None, :] - pos_sim[:, :, None] + margin)
  hinge = jnp.where(neg[:, None, :], hinge, 0)
  per_anchor = jnp.sum(hinge, axis=(1, 2)) / (
      (views - 1) * jnp.maximum(jnp.sum(neg, axis=-1), 1))
  return jnp.mean(per_anchor), _pair_metrics(block, pos, neg, views)


def for_config(loss_cfg: Any) -> ConfiguredLoss:
  """The loss that `config.loss` names, as the train step differentiates it.

  `loss.official_scale` multiplies the loss by the number of views V: the
  official TF2 `add_contrastive_loss` sums its two per-view cross-entropies,
  mean(loss_a + loss_b), where the paper's L (what `nt_xent` returns) is their
  mean. The factor reaches every gradient, so under LARS the parameters it
  does not adapt (BatchNorm, biases) step twice as far, and weight decay
  weighs half as much against the gradient, as in the official code.
  `loss.base_temperature` > 0 (supcon only) multiplies by tau / base, as the
  SupContrast reference does.

  Args:
    loss_cfg: `config.loss` (name, temperature, supcon_variant, margin,
      official_scale, base_temperature).

  Returns:
    fn(z [n, V, d], labels [n] int, axis_name) -> (loss, metrics); labels are
    read by supcon only.

  Raises:
    ValueError: on an unknown loss name (`config.validate` reports every
      invalid loss field in one line before this is reached).
  """
  if loss_cfg.name not in LOSSES:
    raise ValueError(f"loss.name must be one of {LOSSES}; got "
                     f"{loss_cfg.name!r}.")
  name, tau = loss_cfg.name, loss_cfg.temperature

  def base(z, labels, axis_name):
    if name == "nt_xent":
      return nt_xent(z, tau, axis_name=axis_name)
    if name == "supcon":
      return supcon(z, labels, tau, axis_name=axis_name,
                    variant=loss_cfg.supcon_variant,
                    base_temperature=loss_cfg.base_temperature or None)
    if name == "nt_logistic":
      return nt_logistic(z, tau, axis_name=axis_name)
    return margin_triplet(z, loss_cfg.margin, axis_name=axis_name)

  def fn(z: jax.Array, labels: jax.Array,
         axis_name: Optional[str]) -> LossOutput:
    loss, metrics = base(z, labels, axis_name)
    if loss_cfg.official_scale:
      loss = loss * z.shape[1]
    return loss, metrics

  return fn


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels, in float32."""
  logits = logits.astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose arg-max is the label."""
  return jnp.mean(jnp.argmax(logits, -1) == labels)
