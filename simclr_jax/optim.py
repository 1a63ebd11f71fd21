"""Optimizers (LARS, SGD with Nesterov momentum, AdamW, LAMB), masks and schedules.

Weight decay and LARS trust-ratio adaptation apply to conv/dense kernels only:
BatchNorm scales/offsets and every bias are excluded, and so is the supervised
(probe) head, as in the official code's `exclude_from_weight_decay`. LAMB
uses the same mask for its layer-wise trust ratio (the LAMB paper's
`exclude_from_layer_adaptation` defaults to the weight-decay exclusions). The
official code decays the supervised head's kernel anyway, through an L2 term
of its loss (`model.add_weight_decay`); `optim.decay_sup_head` does the same.
"""

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import ml_collections
import optax

OPTIMIZERS = ("lars", "sgd", "adamw", "lamb")
LR_SCALINGS = ("linear", "sqrt", "none")


def _path_names(path) -> Sequence[str]:
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params: Any, exclude: Sequence[str] = ("sup_head",)) -> Any:
  """Returns a pytree of bools: True where weight decay / LARS adaptation apply.

  A leaf is included when it is named `kernel` (conv and dense weights) and no
  module on its path is listed in `exclude`. BatchNorm `scale`/`bias` and dense
  `bias` leaves are therefore excluded.

  Args:
    params: the parameter pytree (nested dicts as produced by Flax).
    exclude: module names whose kernels are excluded too.

  Returns:
    A pytree of Python bools with the structure of `params`.
  """
  def include(path, _):
    names = _path_names(path)
    return names[-1] == "kernel" and not any(n in exclude for n in names)
  return jax.tree_util.tree_map_with_path(include, params)


def sup_head_mask(params: Any, mask: Callable[[Any], Any]) -> Any:
  """True on supervised-head kernels that `mask` leaves out (no double decay)."""
  def include(path, leaf_in_mask):
    names = _path_names(path)
    return (names[-1] == "kernel" and "sup_head" in names
            and not leaf_in_mask)
  return jax.tree_util.tree_map_with_path(include, mask(params))


def scaled_learning_rate(base_lr: float, global_batch: int,
                         scaling: str) -> float:
  """Scales the base learning rate with the global batch size.

  Args:
    base_lr: the configured base learning rate.
    global_batch: the global batch size (images, not views).
    scaling: 'linear' (base × batch / 256), 'sqrt' (base × √batch) or 'none'.

  Returns:
    The peak learning rate.
  """
  if scaling == "linear":
    return base_lr * global_batch / 256.0
  if scaling == "sqrt":
    return base_lr * math.sqrt(global_batch)
  if scaling == "none":
    return base_lr
  raise ValueError(f"optim.lr_scaling={scaling!r} is not one of {LR_SCALINGS}")


def make_schedule(peak_lr: float, total_steps: int,
                  warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `peak_lr`, then cosine decay to 0 at `total_steps`."""
  warmup_steps = min(warmup_steps, total_steps)
  if warmup_steps >= total_steps:
    return optax.linear_schedule(0.0, peak_lr, max(total_steps, 1))
  if warmup_steps == 0:
    return optax.cosine_decay_schedule(peak_lr, decay_steps=total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=0.0)


def schedule_and_optimizer(optim_cfg: ml_collections.ConfigDict, sched: Any,
                           mask: Optional[Callable[[Any], Any]] = None
                           ) -> Tuple[optax.Schedule,
                                      optax.GradientTransformation]:
  """The learning-rate schedule of `sched` (a `config.Schedule`) and the
  configured optimizer following it; `mask` as in `make_optimizer`."""
  schedule = make_schedule(sched.peak_lr, sched.total_steps,
                           sched.warmup_steps)
  return schedule, make_optimizer(optim_cfg, schedule, mask)


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   schedule: optax.Schedule,
                   mask: Optional[Callable[[Any], Any]] = None
                   ) -> optax.GradientTransformation:
  """Builds the configured optimizer.

  Args:
    optim_cfg: `config.optim` with `name`, `weight_decay`, `momentum`,
      `trust_coefficient` (LARS), `nesterov` (SGD), `b1`, `b2`, `eps`
      (AdamW and LAMB) and `decay_sup_head`: add weight_decay x kernel to the
      supervised head's kernel gradient first, which is the gradient of the
      official L2 loss term; that head is outside the LARS trust ratio, so it
      then gets plain lr x momentum steps, as in the official code.
    schedule: the learning-rate schedule.
    mask: function params -> bool pytree selecting decayed/adapted leaves;
      defaults to `decay_mask`.

  Returns:
    An optax GradientTransformation.
  """
  mask = mask or decay_mask
  tx = _base_optimizer(optim_cfg, schedule, mask)
  if optim_cfg.get("decay_sup_head", False) and optim_cfg.weight_decay:
    head_decay = optax.add_decayed_weights(
        optim_cfg.weight_decay, mask=lambda p: sup_head_mask(p, mask))
    tx = optax.chain(head_decay, tx)
  return tx


def _base_optimizer(optim_cfg: ml_collections.ConfigDict,
                    schedule: optax.Schedule,
                    mask: Callable[[Any], Any]) -> optax.GradientTransformation:
  name = optim_cfg.name
  if name == "lars":
    return optax.lars(
        learning_rate=schedule,
        weight_decay=optim_cfg.weight_decay,
        weight_decay_mask=mask,
        trust_coefficient=optim_cfg.trust_coefficient,
        eps=0.0,
        trust_ratio_mask=mask,
        momentum=optim_cfg.momentum,
        nesterov=False)
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(optim_cfg.weight_decay, mask=mask),
        optax.sgd(schedule, momentum=optim_cfg.momentum,
                  nesterov=optim_cfg.nesterov))
  if name == "adamw":
    return optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2,
                       eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay,
                       mask=mask)
  if name == "lamb":
    # optax.lamb adapts every leaf; BatchNorm and biases keep plain Adam
    # steps here, like LARS's trust_ratio_mask.
    return optax.chain(
        optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2,
                            eps=optim_cfg.eps),
        optax.add_decayed_weights(optim_cfg.weight_decay, mask=mask),
        optax.masked(optax.scale_by_trust_ratio(), mask),
        optax.scale_by_learning_rate(schedule))
  raise ValueError(f"optim.name={name!r} is not one of {OPTIMIZERS}")
