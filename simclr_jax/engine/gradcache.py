"""Gradient caching: large contrastive batches in the memory of small chunks.

A contrastive loss couples every example of the batch, so the usual step keeps
the activations of the whole per-device batch alive for the backward pass.
Gradient caching (Gao et al., 2021) splits the step in three:

1. forward every chunk without keeping activations, collecting the outputs
   (projections, probe logits);
2. the loss and its gradient with respect to those outputs over the whole
   batch, all negatives included (the all_gather of the loss is unchanged);
3. for every chunk, recompute its forward pass and backpropagate the cached
   output gradient through it, summing the parameter gradients.

Only one chunk's activations are alive at a time, for one extra forward pass.
The gradients are those of the unchunked step whenever the forward pass of an
example does not depend on the other examples of its chunk: a model without
BatchNorm or with BatchNorm in inference mode. With BatchNorm in train mode
the normalisation statistics are those of each chunk (global over devices,
as the chunk's BatchNorm still reduces over the mesh axis).
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp

from simclr_jax import config as config_lib

Forward = Callable[[Any, Any], Tuple[Any, Any]]


def check_chunks(local_batch: int, num_chunks: int) -> None:
  """Raises ValueError unless `num_chunks` divides the per-device batch.

  Args:
    local_batch: images per device.
    num_chunks: the configured `train.grad_chunks`.
  """
  if (isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or
      num_chunks < 1 or local_batch % num_chunks):
    config_lib.fail("train.grad_chunks", num_chunks, "a positive integer "
                    f"dividing the per-device batch of {local_batch} images "
                    "is required")


def split_chunks(tree: Any, num_chunks: int) -> Any:
  """Reshapes every leaf [n, ...] to [num_chunks, n / num_chunks, ...]."""
  return jax.tree.map(
      lambda x: x.reshape((num_chunks, x.shape[0] // num_chunks) +
                          x.shape[1:]), tree)


def merge_chunks(tree: Any) -> Any:
  """Inverse of `split_chunks`: [c, m, ...] -> [c * m, ...]."""
  return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def cached_value_and_grad(forward: Forward,
                          loss_fn: Callable[[Any], Tuple[jax.Array, Any]],
                          params: Any, inputs: Any, num_chunks: int
                          ) -> Tuple[Tuple[jax.Array, Any], Any, Any]:
  """Loss, aux and parameter gradients, one chunk's activations at a time.

  Args:
    forward: (params, chunk_inputs) -> (outputs, extra). `outputs` is a pytree
      of float arrays with the chunk's examples first (what the loss reads);
      `extra` is not differentiated (e.g. BatchNorm statistics updates).
    loss_fn: outputs of the whole local batch (chunks merged back in order)
      -> (scalar loss, aux). It may use collectives (all_gather) over the
      mesh axis.
    params: the differentiated parameters.
    inputs: pytree with the local batch first; split into `num_chunks` equal
      contiguous chunks.
    num_chunks: chunks per device (1 = an ordinary value_and_grad).

  Returns:
    ((loss, aux), grads, extras): extras stacked with a leading chunk axis.
  """
  chunks = split_chunks(inputs, num_chunks)
  frozen = jax.lax.stop_gradient(params)
  # 1. Outputs of every chunk; nothing is differentiated, nothing kept.
  outputs, extras = jax.lax.map(lambda c: forward(frozen, c), chunks)
  # 2. The whole-batch loss and its gradient with respect to the outputs.
  (loss, aux), d_outputs = jax.value_and_grad(
      lambda o: loss_fn(merge_chunks(o)), has_aux=True)(outputs)

  # 3. Backpropagate each chunk's cached output gradient, summing.
  def backward(total, chunk_and_cotangent):
    chunk, cotangent = chunk_and_cotangent
    _, vjp = jax.vjp(lambda p: forward(p, chunk)[0], params)
    grads = vjp(cotangent)[0]
    return jax.tree.map(jnp.add, total, grads), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(backward, zeros, (chunks, d_outputs))
  return (loss, aux), grads, extras


def mean_over_chunks(extras: Any) -> Any:
  """Averages stacked per-chunk values (e.g. BatchNorm moving averages).

  Each chunk's update is m * old + (1 - m) * stat_c from the same old value,
  so the average is one moving-average step with the chunk-averaged batch
  statistics.

  Args:
    extras: pytree with a leading chunk axis.

  Returns:
    The pytree averaged over that axis.
  """
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), extras)
