"""The `linear_eval` mode: the SimCLR linear evaluation, and its companions.

The encoder is frozen: its variables are a read-only input of the step and
never an output, it runs in inference mode (BatchNorm moving averages, no
update), and only a zero-initialised linear head on h is trained, with
random crop + flip, SGD with Nesterov momentum and lr = base_lr x batch / 256.
The fast probe and the kNN classifier on the same encoder are evaluators
(`eval.evaluators`: 'classifier' is the linear head). Results go to
`<workdir>/linear_eval_results.json`.
"""

import functools
from typing import Any, Dict, Tuple, Union

import jax
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
from simclr_jax.models import build_model
from simclr_jax.models import representation_dim

AXIS = parallel.AXIS


def _apply_head(module, h):
  return module.sup_head(h)


def _head_mask(params):
  # The head's kernel gets the weight decay (1e-6 on ImageNet), not its bias.
  return optim.decay_mask(params, exclude=())


def replica_step(state: state_lib.TrainState, frozen: Any,
                 batch: Dict[str, jax.Array], *, model, tx
                 ) -> Tuple[state_lib.TrainState, Dict[str, jax.Array]]:
  """One SGD step of the linear head on one replica (under `per_replica`).

  Args:
    state: the replicated head state (`params` is the head alone).
    frozen: the encoder's {'params', 'batch_stats'} (read only).
    batch: this replica's {'images': [n, H, W, 3], 'labels': [n]}.
    model: the SimCLR model (its `encode` and `sup_head`).
    tx: the head's optimizer.

  Returns:
    The new head state and pmean'd metrics.
  """
  h = jax.lax.stop_gradient(
      model.apply(frozen, batch["images"], False, method=model.encode))

  def loss_fn(head):
    logits = model.apply({"params": {"sup_head": head}}, h,
                         method=_apply_head)
    loss = losses.cross_entropy(logits, batch["labels"])
    return loss, losses.accuracy(logits, batch["labels"])

  (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  metrics = jax.lax.pmean({"loss": loss, "train_acc": acc}, AXIS)
  return state.apply_gradients(grads, tx), metrics


def full_variables(frozen: Dict[str, Any], head: Any) -> Dict[str, Any]:
  """The frozen variables with the linear head added under 'sup_head'."""
  return {"params": dict(frozen["params"], sup_head=head),
          "batch_stats": frozen["batch_stats"]}


def zero_head(dim: int, num_classes: int) -> Dict[str, Any]:
  """The official linear-eval initialisation: a zero kernel and bias."""
  return {"dense": {"kernel": np.zeros((dim, num_classes), np.float32),
                    "bias": np.zeros((num_classes,), np.float32)}}


class LinearEval(loop.Mode):
  """Linear evaluation, fast probe and kNN of one frozen encoder."""

  name = "linear_eval"
  takes_encoder = True
  # 'classifier' trains and scores the linear head; kNN and the fast probe
  # score the frozen encoder's features.
  evaluators = ("classifier", "fast_probe", "knn")
  default_evaluators = evaluators

  def rules(self):
    """The batch, and k of the kNN protocol, fitted to a small dataset."""
    return (resolve.fit_batch, _fit_knn)

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Something to run, and one encoder to evaluate (or the raw pixels)."""
    names = evals_registry.names(config)
    if not names:
      config_lib.fail("eval.evaluators", names, "name at least one of "
                      f"{self.evaluators}")
    if config.eval.raw_pixels:
      if "classifier" in names:
        config_lib.fail("eval.evaluators", names, "the raw-pixel baseline "
                        "runs 'fast_probe' and 'knn' only (there is no "
                        "encoder to freeze)")
      return
    encoders.check_one_source(config, self.name)

  def check_data(self, config: ml_collections.ConfigDict,
                 facts: resolve.DataFacts) -> None:
    """The head trains on (and kNN remembers) the labelled subset."""
    labelled = resolve.labelled_examples(config, facts)
    resolve.check_batch(config, labelled)
    if _uses_knn(config):
      resolve.check_knn(config, labelled)

  def build(self, config: ml_collections.ConfigDict, mesh,
            workdir: str) -> Union[loop.Job, loop.EvalJob]:
    """The job: train the head when 'classifier' is named, then evaluate."""
    del workdir  # the loop owns the workdir
    from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    info = data_lib.dataset_info(config.data)
    results = {"label_fraction": float(config.eval.label_fraction)}
    if config.eval.raw_pixels:
      model, feature_fn, frozen = None, features_lib.pixel_feature_fn, {}
      results["source"] = {"kind": "raw_pixels", "step": 0}
    else:
      host_vars, model_cfg, results["source"] = encoders.load_encoder(config)
      model = build_model(dict(model_cfg, sup_head_from=0), info.num_classes,
                          axis_name=AXIS)
      feature_fn = features_lib.encoder_feature_fn(model)
      frozen = parallel.replicate(mesh, {
          "params": host_vars["params"],
          "batch_stats": host_vars["batch_stats"]})
    results["step"] = results["source"].get("step")
    evaluators = evals_registry.build(evals_registry.Context(
        config, mesh, num_classes=info.num_classes, model=model,
        classifier_key="linear", feature_fn=feature_fn, frozen_encoder=True))
    if "classifier" not in evals_registry.names(config):
      return loop.EvalJob(evaluators=evaluators, variables=lambda: frozen,
                          results=results,
                          description="Linear evaluation (features only)")
    labels = data_lib.load_labels(config.data, config.data.train_split)
    indices = features_lib.labelled_indices(config, labels)
    sched = config_lib.derive_schedule(config, len(indices))
    _, tx = optim.schedule_and_optimizer(config.optim, sched, _head_mask)
    state = state_lib.new_state(
        mesh, zero_head(representation_dim(model_cfg), info.num_classes), {},
        tx)
    def finish(state, results):
      del state  # the head is scored by the 'linear' evaluator
      results["linear"].update(steps=int(sched.total_steps),
                               num_train=int(len(indices)))

    return loop.Job(
        state=state, step_fn=state_lib.make_step(
            functools.partial(replica_step, model=model, tx=tx), mesh, 1),
        step_args=(frozen,),
        batches=lambda start: data_lib.make_supervised_iterator(
            config.data, config.aug, config.train.global_batch, config.seed,
            start_step=start, indices=indices),
        total_steps=sched.total_steps,
        images_per_step=config.train.global_batch, evaluators=evaluators,
        variables=lambda state: full_variables(frozen, state.params),
        finish=finish, results=results,
        description=f"Linear evaluation on {len(indices)} labelled examples "
        f"(lr {sched.peak_lr:.4g})")


def _uses_knn(config: ml_collections.ConfigDict) -> bool:
  return "knn" in evals_registry.names(config)


def _fit_knn(config: ml_collections.ConfigDict,
             facts: resolve.DataFacts) -> resolve.Changes:
  if not (resolve.fits(config) and _uses_knn(config)):
    return {}
  return resolve.lower(config, "eval.knn_k", max(1, facts.num_train))


MODE = LinearEval()

run = MODE.run  # run(config, workdir, guard=None): the mode in the loop
