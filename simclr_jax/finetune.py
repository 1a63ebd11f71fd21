"""Semi-supervised fine-tuning (the SimCLR v2 protocol) and the `finetune` mode.

Every layer is trained, starting from the output of projection-head layer
`finetune.head_from` (0 = drop the head and classify h; 1 = keep the first
head layer, as SimCLR v2 does), on a labelled part of the training set: a
TFDS subset split such as `imagenet2012_subset/1pct` (set `data.name`), or a
seeded class-balanced `eval.label_fraction` of any dataset. BatchNorm runs in
training mode with global statistics, as in pretraining.
"""

import functools
import os
import time
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from simclr_jax import checkpoint as ckpt_lib
from simclr_jax import config as config_lib
from simclr_jax import data as data_lib
from simclr_jax import evaluate
from simclr_jax import export
from simclr_jax import features as features_lib
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax import train
from simclr_jax.models import build_model

AXIS = parallel.AXIS


def replica_step(state: train.TrainState, batch: Dict[str, jax.Array], *,
                 model, tx) -> Tuple[train.TrainState, Dict[str, jax.Array]]:
  """One fine-tuning step of the whole network on one replica.

  Args:
    state: the replicated train state.
    batch: this replica's {'images': [n, H, W, 3], 'labels': [n]}.
    model: the model (BatchNorm bound to `AXIS`, no stop-gradient).
    tx: the optimizer.

  Returns:
    The new state and pmean'd metrics.
  """
  def loss_fn(params):
    out, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        batch["images"], train=True, mutable=["batch_stats"])
    loss = train.cross_entropy(out["logits"], batch["labels"])
    acc = jnp.mean(jnp.argmax(out["logits"], -1) == batch["labels"])
    return loss, (updates["batch_stats"], acc)

  (loss, (stats, acc)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new = state.replace(step=state.step + 1,
                      params=optax.apply_updates(state.params, updates),
                      batch_stats=stats, opt_state=opt_state)
  return new, jax.lax.pmean({"loss": loss, "train_acc": acc}, AXIS)


def initial_variables(model, variables: Dict[str, Any],
                      image_size: int) -> Dict[str, Any]:
  """The pretrained variables with a zero-initialised classifier of `model`.

  Args:
    model: the fine-tuning model (its `sup_head` fixes the head's shapes).
    variables: pretrained host variables (any previous sup_head is dropped).
    image_size: input side, for shape inference.

  Returns:
    Host variables {'params', 'batch_stats'}.
  """
  shapes = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, image_size, image_size, 3)))
  head = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                      shapes["params"]["sup_head"])
  params = {k: v for k, v in variables["params"].items() if k != "sup_head"}
  return {"params": dict(params, sup_head=head),
          "batch_stats": variables["batch_stats"]}


def run(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Fine-tunes the encoder named by `config.init` and scores the eval split.

  Args:
    config: a configuration with mode 'finetune'.
    workdir: directory for checkpoints, results and the fine-tuned export.

  Returns:
    The results dict also written to `<workdir>/finetune_results.json`
    ('finetune': top-1/top-5/num_examples, 'source', 'step', 'config').
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  info = data_lib.dataset_info(config.data)
  host_vars, model_cfg, source = export.load_encoder(config)
  head_from = int(config.finetune.head_from)
  if head_from > model_cfg["head_layers"]:
    raise ValueError(f"config.finetune.head_from={head_from} is invalid: the "
                     f"encoder's projection head has {model_cfg['head_layers']}"
                     " layers")
  model_cfg = dict(model_cfg, sup_head_from=head_from)
  model = build_model(model_cfg, info.num_classes, axis_name=AXIS,
                      sup_stop_gradient=False)
  labels = data_lib.load_labels(config.data, config.data.train_split)
  indices = features_lib.labelled_indices(config, labels)
  sched = config_lib.derive_schedule(config, len(indices))
  schedule = optim.make_schedule(sched.peak_lr, sched.total_steps,
                                 sched.warmup_steps)
  tx = optim.make_optimizer(config.optim, schedule)
  variables = initial_variables(model, host_vars, config.data.image_size)
  state = parallel.replicate(mesh, train.TrainState(
      step=np.zeros((), np.int32), params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"])))
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start = checkpointer.latest_step() or 0
  if start:
    logging.info("Resuming fine-tuning from step %d", start)
    state = checkpointer.restore(start, state)
  step_fn = jax.jit(parallel.per_replica(
      functools.partial(replica_step, model=model, tx=tx), mesh,
      in_specs=(P(), P(AXIS)), out_specs=(P(), P())), donate_argnums=(0,))
  batches = data_lib.make_supervised_iterator(
      config.data, config.aug, config.train.global_batch, config.seed,
      start_step=start, indices=indices)
  total = sched.total_steps
  logging.info("Fine-tuning from head layer %d: %d steps on %d labelled "
               "examples, lr %.4g", head_from, total, len(indices),
               sched.peak_lr)
  pending, t0 = [], time.time()
  for step in range(start + 1, total + 1):
    state, metrics = step_fn(state,
                             parallel.host_to_global(mesh, next(batches)))
    pending.append(metrics)
    if config_lib.is_time(step, config.train.log_every_steps, total):
      logging.info("fine-tune step %d/%d: %s (%.1f s)", step, total,
                   train.mean_metrics(pending), time.time() - t0)
      pending = []
    if config_lib.is_time(step, config.train.checkpoint_every_steps, total):
      checkpointer.save(step, state)
  checkpointer.close()
  eval_step = evaluate.make_classifier_eval_step(
      evaluate.probe_logits_fn(model), mesh)
  scores = evaluate.run_classifier_eval(
      eval_step, state.variables, data_lib.make_eval_iterator(
          config.data, config.aug, config.data.eval_split,
          config.eval.batch_size), mesh)
  scores.update(steps=int(total), num_train=int(len(indices)),
                head_from=head_from)
  # The fine-tuned network as an export (e.g. a distillation teacher).
  ckpt_lib.save_export(os.path.join(workdir, "export"),
                       parallel.to_host(state.variables), model_cfg,
                       info.num_classes, config.data.image_size,
                       extra={"source": "simclr_jax fine-tuning",
                              "init": source, "step": int(total)})
  results = {"finetune": scores, "source": source, "step": source.get("step"),
             "label_fraction": float(config.eval.label_fraction),
             "config": config.to_dict()}
  logging.info("Fine-tuned on %s: top-1 %.4f over %d examples",
               config.data.eval_split, scores["top1"], scores["num_examples"])
  evaluate.write_results(workdir, "finetune_results", results)
  return results
