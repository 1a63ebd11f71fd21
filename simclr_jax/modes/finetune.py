"""The `finetune` mode: semi-supervised fine-tuning (the SimCLR v2 protocol).

Every layer is trained, starting from the output of projection-head layer
`finetune.head_from` (0 = drop the head and classify h; 1 = keep the first
head layer, as SimCLR v2 does), on a labelled part of the training set: a
TFDS subset split such as `imagenet2012_subset/1pct` (set `data.name`), or a
seeded class-balanced `eval.label_fraction` of any dataset. BatchNorm runs in
training mode with global statistics, as in pretraining. The fine-tuned
network is exported to `<workdir>/export` (e.g. a distillation teacher).
"""

import functools
import os
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simclr_jax import config as config_lib
from simclr_jax import losses
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.engine import loop
from simclr_jax.engine import resolve
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import encoders
from simclr_jax.evals import features as features_lib
from simclr_jax.evals import registry as evals_registry
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model

AXIS = parallel.AXIS


def replica_step(state: state_lib.TrainState, batch: Dict[str, jax.Array], *,
                 model, tx) -> Tuple[state_lib.TrainState, Dict[str, jax.Array]]:
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
    loss = losses.cross_entropy(out["logits"], batch["labels"])
    acc = losses.accuracy(out["logits"], batch["labels"])
    return loss, (updates["batch_stats"], acc)

  (loss, (stats, acc)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean({"loss": loss, "train_acc": acc}, AXIS)
  return state.apply_gradients(grads, tx, stats), metrics


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


class Finetune(loop.Mode):
  """Fine-tuning of the encoder named by `config.init` on labelled data."""

  name = "finetune"
  takes_encoder = True

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """One encoder to start from, and a head layer."""
    encoders.check_one_source(config, self.name)
    if config.finetune.head_from < 0:
      config_lib.fail("finetune.head_from", config.finetune.head_from,
                      "must be >= 0")

  def check_data(self, config: ml_collections.ConfigDict,
                 facts: resolve.DataFacts) -> None:
    """Fine-tuning trains on the labelled subset."""
    resolve.check_batch(config, resolve.labelled_examples(config, facts))

  def build(self, config: ml_collections.ConfigDict, mesh,
            workdir: str) -> loop.Job:
    """The fine-tuning job; see `engine.loop.Job`."""
    from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    info = data_lib.dataset_info(config.data)
    host_vars, model_cfg, source = encoders.load_encoder(config)
    head_from = int(config.finetune.head_from)
    if head_from > model_cfg["head_layers"]:
      config_lib.fail("finetune.head_from", head_from, "the encoder's "
                      f"projection head has {model_cfg['head_layers']} layers")
    model_cfg = dict(model_cfg, sup_head_from=head_from)
    model = build_model(model_cfg, info.num_classes, axis_name=AXIS,
                        sup_stop_gradient=False)
    labels = data_lib.load_labels(config.data, config.data.train_split)
    indices = features_lib.labelled_indices(config, labels)
    sched = config_lib.derive_schedule(config, len(indices))
    _, tx = optim.schedule_and_optimizer(config.optim, sched)
    variables = initial_variables(model, host_vars, config.data.image_size)
    state = state_lib.new_state(mesh, variables["params"],
                                variables["batch_stats"], tx)

    write_export = export_lib.exporter(
        os.path.join(workdir, "export"), model_cfg, info.num_classes,
        config.data.image_size, config.aug.eval_crop_proportion)

    def finish(state, results):
      results["finetune"].update(steps=int(sched.total_steps),
                                 num_train=int(len(indices)),
                                 head_from=head_from)
      write_export(parallel.to_host(state.variables),
                   {"source": "simclr_jax fine-tuning", "init": source,
                    "step": int(sched.total_steps)})

    return loop.Job(
        state=state, step_fn=state_lib.make_step(
            functools.partial(replica_step, model=model, tx=tx), mesh),
        batches=lambda start: data_lib.make_supervised_iterator(
            config.data, config.aug, config.train.global_batch, config.seed,
            start_step=start, indices=indices),
        total_steps=sched.total_steps,
        images_per_step=config.train.global_batch,
        evaluators=evals_registry.build(evals_registry.Context(
            config, mesh, model=model, classifier_key="finetune")),
        finish=finish,
        results={"source": source, "step": source.get("step"),
                 "label_fraction": float(config.eval.label_fraction)},
        description=f"Fine-tuning from head layer {head_from} on "
        f"{len(indices)} labelled examples (lr {sched.peak_lr:.4g})")


MODE = Finetune()

run = MODE.run  # run(config, workdir, guard=None): the mode in the loop
