"""The modes of `python -m simclr_jax.main`, by name.

Each mode is a small object that builds a `engine.loop.Job`; the one loop
runs them all. A new mode is a new file and one line here.
"""

from typing import Dict, Optional

from simclr_jax.config import fail

from simclr_jax.engine import loop
from simclr_jax.engine import resolve
from simclr_jax.modes import distill
from simclr_jax.modes import finetune
from simclr_jax.modes import linear_eval
from simclr_jax.modes import pretrain

MODES: Dict[str, loop.Mode] = {
    m.name: m for m in (pretrain.MODE, linear_eval.MODE, finetune.MODE,
                        distill.MODE)}



def get(name: str) -> loop.Mode:
  """The mode named `name` (`config.mode`); ConfigError for an unknown one."""
  if name not in MODES:
    fail("mode", name, f"allowed values are {tuple(MODES)}")
  return MODES[name]


def validate(config, num_devices: Optional[int] = None,
             num_processes: int = 1) -> None:
  """Every field check of `config` that needs no data: the shared ones, the
  model's and its mode's (`engine.resolve.validate`)."""
  resolve.validate(get(config.mode), config, num_devices, num_processes)


# Result keys of the modes and how the console names them, in print order.
RESULT_NAMES = (("probe", "online linear probe"), ("knn", "kNN"),
                ("linear_probe", "linear probe"), ("linear", "linear eval"),
                ("finetune", "fine-tuned"), ("student", "distilled student"),
                ("teacher", "teacher"))


def print_results(results: Dict, split: str) -> None:
  """Prints the top-1 of every result a mode returned, one line each."""
  for key, name in RESULT_NAMES:
    if key in results:
      print(f"{name} top-1 accuracy on {split}: {results[key]['top1']:.4f}")
  if results.get("heldout"):
    r = results["heldout"]
    print(f"held-out pairs of {split} ({r['num_examples']} images): "
          f"contrastive top-1 {r['contrastive_top1']:.4f}, alignment "
          f"{r['alignment']:.4f}, uniformity {r['uniformity']:.4f}")
