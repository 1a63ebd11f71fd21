"""Supervised contrastive pretraining (SupCon, Khosla et al. 2020) on digits.

The digits SimCLR recipe with the labels used as positives: every other view
of the same class in the whole global batch is a positive of an anchor (L_out,
the mean over positives outside the log). Same model, batch, views and
schedule as configs/digits.py, so the two linear probes compare directly:
  python -m simclr_jax.main --config=configs/digits_supcon.py --workdir=runs/digits_supcon
More views per image (all in one global batch):
  python -m simclr_jax.main --config=configs/digits_supcon.py \
      --workdir=runs/digits_supcon_v4 --config.aug.num_views=4
Quick variant for debugging (a few steps, tiny model, 4 views):
  python -m simclr_jax.main --config=configs/digits_supcon.py:tiny --workdir=runs/supcon_tiny
"""

import ml_collections

from configs import digits


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the digits SupCon config; `arg='tiny'` gives a seconds-long run."""
  config = digits.get_config("tiny" if arg == "tiny" else "")
  config.loss.name = "supcon"
  config.loss.supcon_variant = "out"  # L_out: the paper's better variant
  config.loss.temperature = 0.1  # the SupCon paper's temperature
  if arg == "tiny":
    config.aug.num_views = 4  # exercises the multi-view path
  elif arg:
    raise ValueError(f"configs/digits_supcon.py: unknown variant {arg!r}; "
                     "allowed: '', 'tiny'")
  return config
