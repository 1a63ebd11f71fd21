"""Exact evaluation: every example of a split counted once, on any topology.

Eval batches are padded and carry a `mask`; the per-replica step sums correct
predictions and valid examples and psums them over all devices, so accuracy
is exact on any number of hosts and devices (no dropped remainder).

Also the entry point that evaluates an export (a pretraining export or a
converted official checkpoint) with the protocols of a config:
  python -m simclr_jax.evaluate --export=EXPORT --config=configs/digits_linear.py
runs linear eval, the fast probe and kNN (mode linear_eval) or fine-tuning
(mode finetune) and writes the results JSON to --workdir (default EXPORT_eval).
"""

import json
import os
from typing import Any, Callable, Dict, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import PartitionSpec as P

from simclr_jax import parallel

AXIS = parallel.AXIS


def classifier_counts(logits: jax.Array, labels: jax.Array,
                      mask: jax.Array, top_k: int = 5) -> Dict[str, jax.Array]:
  """Correct top-1 / top-k predictions and valid examples, over masked rows.

  Args:
    logits: [b, C] class scores.
    labels: [b] integer labels.
    mask: [b] bool, False on padding rows.
    top_k: k of the top-k accuracy (clipped to the number of classes).

  Returns:
    {'top1': count, 'topk': count, 'count': valid rows} as float32 scalars.
  """
  k = min(top_k, logits.shape[-1])
  mask = mask.astype(jnp.float32)
  top1 = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  _, topk_idx = jax.lax.top_k(logits, k)
  topk = jnp.any(topk_idx == labels[:, None], axis=-1).astype(jnp.float32)
  return {"top1": jnp.sum(top1 * mask), "topk": jnp.sum(topk * mask),
          "count": jnp.sum(mask)}


def make_classifier_eval_step(logits_fn: Callable[[Any, jax.Array], jax.Array],
                              mesh, top_k: int = 5) -> Callable:
  """Returns jit(shard_map(...)) mapping (variables, batch) to global counts.

  Args:
    logits_fn: (variables, images) -> logits for one replica.
    mesh: the device mesh.
    top_k: k of the top-k accuracy.
  """
  def replica(variables, batch):
    logits = logits_fn(variables, batch["images"])
    counts = classifier_counts(logits, batch["labels"], batch["mask"], top_k)
    return jax.lax.psum(counts, AXIS)

  mapped = parallel.per_replica(replica, mesh, in_specs=(P(), P(AXIS)),
                                out_specs=P())
  return jax.jit(mapped)


def run_classifier_eval(eval_step: Callable, variables: Any,
                        batches: Iterable[Dict[str, np.ndarray]],
                        mesh) -> Dict[str, float]:
  """Runs `eval_step` over padded host batches and returns exact accuracies.

  Args:
    eval_step: from `make_classifier_eval_step`.
    variables: replicated model variables.
    batches: this host's padded batches {'images', 'labels', 'mask'}.
    mesh: the device mesh.

  Returns:
    {'top1', 'top5', 'num_examples'}.
  """
  totals = None
  for batch in batches:
    counts = eval_step(variables, parallel.host_to_global(mesh, batch))
    totals = counts if totals is None else jax.tree.map(jnp.add, totals,
                                                        counts)
  if totals is None:
    raise ValueError("the evaluation split yielded no batches")
  totals = parallel.to_host(totals)
  count = float(totals["count"])
  return {"top1": float(totals["top1"]) / count,
          "top5": float(totals["topk"]) / count,
          "num_examples": int(round(count))}


def probe_logits_fn(model) -> Callable[[Any, jax.Array], jax.Array]:
  """(variables, images) -> supervised-head logits in inference mode."""
  def fn(variables, images):
    return model.apply(variables, images, train=False)["logits"]
  return fn


def write_results(workdir: str, name: str, results: Dict[str, Any]) -> str:
  """Writes `results` as `<workdir>/<name>.json` from process 0; returns the path."""
  directory = epath.Path(workdir)
  path = os.path.join(workdir, f"{name}.json")
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, sort_keys=True, default=_jsonable)
    if "://" in workdir:  # object stores write whole objects atomically
      epath.Path(path).write_text(text)
    else:  # a reader never sees a half-written file
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, path)
  return path


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return str(x)



def main(argv) -> None:
  """Evaluates --export with --config; prints top-1 of every protocol."""
  # pylint: disable=g-import-not-at-top
  from absl import app
  from absl import flags
  from simclr_jax import config as config_lib
  from simclr_jax import finetune
  from simclr_jax import linear_eval
  # pylint: enable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  config = fv.config
  with config.unlocked():
    config.init.export = fv.export
  config_lib.validate(config)
  runs = {"linear_eval": linear_eval.run, "finetune": finetune.run}
  if config.mode not in runs:
    raise ValueError(f"config.mode={config.mode!r} is invalid here: "
                     f"allowed values are {tuple(runs)}")
  workdir = fv.workdir or fv.export.rstrip("/") + "_eval"
  results = runs[config.mode](config, workdir)
  if jax.process_index() == 0:
    for key in ("linear", "linear_probe", "knn", "finetune"):
      if key in results:
        print(f"{key} top-1 accuracy on {config.data.eval_split}: "
              f"{results[key]['top1']:.4f}")
    print(f"results: {os.path.join(workdir, config.mode + '_results.json')}")


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "evaluation config file "
                                  "(mode linear_eval or finetune)")
  flags.DEFINE_string("export", None, "export directory to evaluate")
  flags.DEFINE_string("workdir", None, "results directory (default: "
                      "EXPORT_eval)")
  flags.mark_flags_as_required(["config", "export"])


if __name__ == "__main__":
  define_flags()
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _app.run(main)
