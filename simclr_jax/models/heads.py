"""Projection head and supervised (linear) head of the official SimCLR model.

Both follow google-research/simclr `tf2/model.py`: the projection head is its
`ProjectionHead` in mode 'nonlinear' (each layer a bias-free Dense followed by
BatchNorm; ReLU and BN offset on the middle layers only), the supervised head
its `SupervisedHead` (a Dense with bias). All dense kernels start from
N(0, `DENSE_INIT_STDDEV`^2), the official `RandomNormal(stddev=0.01)`.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

DENSE_INIT_STDDEV = 0.01


class ProjectionHead(nn.Module):
  """The projection head g: `num_layers` x (Dense -> BN [-> ReLU]).

  Attributes:
    num_layers: number of layers (2 = SimCLR v1, 3 = SimCLR v2; 1 = the
      official "linear" head; 0 = none, an empty tuple).
    hidden_dim: width of the middle layers; 0 = width of the input.
    proj_dim: width of the last layer (z).
    bn_momentum: decay of the BatchNorm moving averages.
    bn_epsilon: BatchNorm epsilon.
    axis_name: mesh axis to average batch statistics over (global BN).
    dtype: compute dtype; parameters and statistics stay float32.
    init_stddev: standard deviation of the dense kernels' normal init.
  """
  num_layers: int
  hidden_dim: int
  proj_dim: int
  bn_momentum: float
  bn_epsilon: float
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  init_stddev: float = DENSE_INIT_STDDEV

  @nn.compact
  def __call__(self, h, train: bool) -> Tuple[jnp.ndarray, ...]:
    """Applies the head.

    Args:
      h: representations [B, C].
      train: use (and update) batch statistics instead of moving averages.

    Returns:
      The output of every layer, first to last (the last one is z).
    """
    hidden = self.hidden_dim or h.shape[-1]
    outputs = []
    x = h
    for k in range(self.num_layers):
      last = k == self.num_layers - 1
      x = nn.Dense(self.proj_dim if last else hidden, use_bias=False,
                   kernel_init=nn.initializers.normal(self.init_stddev),
                   dtype=self.dtype, name=f"dense{k}")(x)
      # The last BN has no offset (official `center=False`), the others do.
      x = nn.BatchNorm(use_running_average=not train,
                       momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                       use_bias=not last, axis_name=self.axis_name,
                       dtype=self.dtype, name=f"bn{k}")(x)
      if not last:
        x = nn.relu(x)
      outputs.append(x)
    return tuple(outputs)


class SupervisedHead(nn.Module):
  """Linear classifier with bias (official `SupervisedHead`).

  Attributes:
    num_classes: number of output logits.
    dtype: compute dtype; parameters stay float32.
    init_stddev: standard deviation of the kernel's normal init.
  """
  num_classes: int
  dtype: Any = jnp.float32
  init_stddev: float = DENSE_INIT_STDDEV

  @nn.compact
  def __call__(self, x):
    """Returns logits [B, num_classes] for features x [B, C]."""
    return nn.Dense(self.num_classes,
                    kernel_init=nn.initializers.normal(self.init_stddev),
                    dtype=self.dtype, name="dense")(x)
