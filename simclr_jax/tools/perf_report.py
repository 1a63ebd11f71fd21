"""Benchmark figures that need XLA: achieved FLOP/s and compiled memory.

Used by `simclr_jax.tools.benchmark` (`--flops`, `--memory`). Every figure comes
from the compiled program on the devices at hand: XLA's cost analysis for the
FLOPs of a step, `memory_analysis()` for its temporary buffers per device.
"""

import time
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from simclr_jax import config as config_lib
from simclr_jax.engine import gradcache
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.models.simclr import DTYPES
from simclr_jax.modes import pretrain

AXIS = parallel.AXIS
MIB = 2.0 ** 20


def _time(fn, args, steps: int) -> float:
  """Seconds per call of fn(*args) after one untimed call."""
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(steps):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / steps


def compiled_flops(fn, *args) -> float:
  """FLOPs of one call of a jitted fn per XLA's cost analysis (per device)."""
  cost = fn.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0


def matmul_flops_per_sec(dtype: Any, side: int = 2048, steps: int = 5) -> float:
  """Measured rate of a square matmul on the default device.

  Args:
    dtype: operand dtype (the model's compute dtype).
    side: matrix side.
    steps: timed calls.

  Returns:
    FLOP/s (2 side^3 per product).
  """
  a = jnp.ones((side, side), dtype)
  seconds = _time(jax.jit(lambda x: x @ x), (a,), steps)
  return 2.0 * side ** 3 / seconds


def mean_loss_step(model, mesh, grad_chunks: int = 1):
  """jit(shard_map) forward+backward with the loss replaced by mean(z).

  Same model, same global BatchNorm and gradient pmean as the train step;
  no contrastive loss, no all_gather, no optimizer. With `grad_chunks` > 1
  the gradient goes through `gradcache` as in the train step.
  """
  def step(params, batch_stats, batch):
    images = batch["images"]
    x = images.reshape((-1,) + images.shape[2:])

    def forward(p, chunk):
      out, upd = model.apply({"params": p, "batch_stats": batch_stats}, chunk,
                             train=True, mutable=["batch_stats"])
      return out["z"], upd["batch_stats"]

    if grad_chunks > 1:
      (loss, _), grads, stats = gradcache.cached_value_and_grad(
          forward, lambda z: (jnp.mean(z), None), params, x, grad_chunks)
      stats = gradcache.mean_over_chunks(stats)
    else:
      def loss_fn(p):
        z, stats = forward(p, x)
        return jnp.mean(z), stats

      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return jax.lax.pmean((loss, grads), AXIS), stats

  return jax.jit(parallel.per_replica(step, mesh,
                                      in_specs=(P(), P(), P(AXIS)),
                                      out_specs=(P(), P())))


def print_flops(config, step_fn, state, batch, images_per_sec: float,
                steps: int) -> Dict[str, float]:
  """Prints achieved FLOP/s, the matmul rate and the mean-loss step time.

  Args:
    config: the full config.
    step_fn: the jitted train step.
    state: its train state (not donated here: the step is lowered only).
    batch: a device batch.
    images_per_sec: the measured train-step rate.
    steps: timed calls of the mean-loss step.

  Returns:
    The printed figures.
  """
  devices = jax.device_count()
  step_s = config.train.global_batch / images_per_sec
  flops = compiled_flops(step_fn, state, batch) * devices
  dtype = DTYPES[config.model.dtype]
  peak = matmul_flops_per_sec(dtype) * devices
  model = build_model(model_config(config),
                      num_classes=0, axis_name=AXIS)
  mean_fn = mean_loss_step(model, parallel.make_mesh())
  params = {k: v for k, v in state.params.items() if k != "sup_head"}
  mean_s = _time(mean_fn, (params, state.batch_stats, batch), steps)
  figures = {"step_s": step_s, "flops_per_step": flops,
             "achieved_flops": flops / step_s, "matmul_flops": peak,
             "mean_loss_step_s": mean_s}
  print(f"train step: {flops / 1e9:.2f} GFLOP per step (XLA cost analysis), "
        f"{flops / step_s / 1e9:.1f} GFLOP/s achieved, "
        f"{flops / step_s / peak:.1%} of the measured {config.model.dtype} "
        f"matmul rate ({peak / 1e9:.1f} GFLOP/s over {devices} device(s))")
  print(f"train step {step_s * 1e3:.1f} ms vs forward+backward with a plain "
        f"mean loss {mean_s * 1e3:.1f} ms: ratio {step_s / mean_s:.3f}")
  return figures


def loss_memory(global_batch: int, views: int, dim: int, temperature: float,
                mesh) -> Dict[str, float]:
  """Compiled temporary bytes per device of NT-Xent's value and z-gradient.

  Args:
    global_batch: images over all devices.
    views: views per image.
    dim: projection width.
    temperature: loss temperature.
    mesh: the device mesh.

  Returns:
    {'temp_bytes', 'block_bytes'}: the temporary memory and the size of one
    float32 local-rows x global-columns logit block.
  """
  from simclr_jax import losses  # pylint: disable=g-import-not-at-top

  def grad(z):
    return jax.value_and_grad(
        lambda z: losses.nt_xent(z, temperature, axis_name=AXIS)[0])(z)

  fn = jax.jit(parallel.per_replica(grad, mesh, in_specs=(P(AXIS),),
                                    out_specs=(P(), P(AXIS))))
  z = jax.ShapeDtypeStruct((global_batch, views, dim), jnp.float32,
                           sharding=parallel.batch_sharding(mesh))
  mem = fn.lower(z).compile().memory_analysis()
  rows = global_batch // mesh.size * views
  return {"temp_bytes": float(mem.temp_size_in_bytes),
          "block_bytes": 4.0 * rows * global_batch * views}


def print_loss_memory(config, global_batches: Sequence[int]) -> List[Dict]:
  """Prints the loss-step memory table for `global_batches`.

  Args:
    config: the full config (views, proj_dim, temperature).
    global_batches: global batch sizes.

  Returns:
    One dict of `loss_memory` figures per batch.
  """
  mesh = parallel.make_mesh()
  rows = []
  for n in global_batches:
    m = loss_memory(n, config.aug.num_views, config.model.proj_dim,
                    config.loss.temperature, mesh)
    rows.append(m)
    print(f"loss step, global batch {n} over {mesh.size} devices: "
          f"{m['temp_bytes'] / MIB:.1f} MiB temporary per device = "
          f"{m['temp_bytes'] / m['block_bytes']:.2f} x the "
          f"{n // mesh.size * config.aug.num_views} x "
          f"{n * config.aug.num_views} float32 logit block")
  return rows


def _batch_spec(config, mesh, global_batch: int) -> Dict[str, Any]:
  size, views = config.data.image_size, config.aug.num_views
  sharding = parallel.batch_sharding(mesh)
  return {"images": jax.ShapeDtypeStruct(
      (global_batch, views, size, size, 3), jnp.float32, sharding=sharding),
          "labels": jax.ShapeDtypeStruct((global_batch,), jnp.int32,
                                         sharding=sharding)}


def _pretrain_state_and_step(config, mesh, global_batch: int, chunks: int):
  sched = config_lib.Schedule(steps_per_epoch=1, total_steps=10 ** 6,
                              warmup_steps=0, peak_lr=1e-3)
  c = config.copy_and_resolve_references()
  c.train.global_batch = global_batch
  c.train.grad_chunks = chunks
  _, _, _, state, step_fn = pretrain.build_pretrain(c, 10, sched, mesh)
  return state, step_fn


def step_temp_bytes(config, mesh, global_batch: int, chunks: int) -> float:
  """Compiled temporary bytes per device of the whole train step.

  Args:
    config: the full config.
    mesh: the device mesh.
    global_batch: images per step.
    chunks: `train.grad_chunks`.

  Returns:
    XLA's `temp_size_in_bytes` of the compiled step (nothing is run).
  """
  state, step_fn = _pretrain_state_and_step(config, mesh, global_batch, chunks)
  batch = _batch_spec(config, mesh, global_batch)
  return float(step_fn.lower(state, batch).compile().memory_analysis()
               .temp_size_in_bytes)


def encoder_temp_bytes(config, mesh, global_batch: int, chunks: int) -> float:
  """Compiled temporary bytes per device of the model's forward+backward.

  The loss is a plain mean of the projections (`mean_loss_step`), so the
  figure is the network's own memory, without the contrastive loss block
  that gradient caching keeps whole by design (its size is the loss table's).

  Args:
    config: the full config.
    mesh: the device mesh.
    global_batch: images per step.
    chunks: `train.grad_chunks`.

  Returns:
    XLA's `temp_size_in_bytes` (nothing is run).
  """
  state, _ = _pretrain_state_and_step(config, mesh, global_batch, 1)
  model = build_model(model_config(config), num_classes=0,
                      axis_name=AXIS)
  fn = mean_loss_step(model, mesh, chunks)
  params = {k: v for k, v in state.params.items() if k != "sup_head"}
  batch = _batch_spec(config, mesh, global_batch)
  return float(fn.lower(params, state.batch_stats, batch).compile()
               .memory_analysis().temp_size_in_bytes)


def print_step_memory(config, chunk_counts: Sequence[int]) -> List[Dict]:
  """Prints the train step's temporary and activation memory per grad_chunks.

  Two tables. The whole train step's temporary memory per device, loss
  included. Then the activation memory: the temporary memory of the model's
  forward+backward (loss = mean of the projections) is a part that does not
  depend on the batch (gradient buffers) plus a part proportional to it, the
  activations kept for the backward pass. Compiling at the global batch N
  and at N / 2 separates them: fixed = 2 T(N / 2) - T(N), activations =
  T(N) - fixed. Gradient caching should divide the activations by the number
  of chunks.

  Args:
    config: the full config (model, train.global_batch).
    chunk_counts: `train.grad_chunks` values.

  Returns:
    One dict per chunk count: 'chunks', 'step_bytes', 'fixed_bytes',
    'activation_bytes'.
  """
  mesh = parallel.make_mesh()
  n = config.train.global_batch
  if n % (2 * mesh.size):
    raise ValueError(f"train.global_batch = {n} is invalid for the memory "
                     f"table: need a multiple of 2 x {mesh.size} devices (the "
                     "activations are separated at half the batch too).")
  out = []
  for chunks in chunk_counts:
    step = step_temp_bytes(config, mesh, n, chunks)
    full = encoder_temp_bytes(config, mesh, n, chunks)
    half = encoder_temp_bytes(config, mesh, n // 2, chunks)
    fixed = max(0.0, 2.0 * half - full)
    out.append({"chunks": chunks, "step_bytes": step, "fixed_bytes": fixed,
                "activation_bytes": full - fixed})
    first, row = out[0], out[-1]
    print(f"train step, global batch {n} over {mesh.size} devices, "
          f"grad_chunks={chunks}: {step / MIB:.1f} MiB temporary per device "
          f"({first['step_bytes'] / step:.2f} x less than "
          f"grad_chunks={first['chunks']}); activation memory "
          f"{row['activation_bytes'] / MIB:.1f} MiB "
          f"({first['activation_bytes'] / row['activation_bytes']:.2f} x "
          f"less; forward+backward {full / MIB:.1f} MiB at batch {n}, "
          f"{half / MIB:.1f} MiB at {n // 2}, of which {fixed / MIB:.1f} MiB "
          "does not depend on the batch)")
  return out
