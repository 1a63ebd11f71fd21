"""Linear evaluation, fast probe and kNN of a digits encoder (configs/digits.py).

The encoder comes from a pretraining workdir or an export:
  python -m simclr_jax.main --config=configs/digits_linear.py \
      --workdir=runs/digits_linear --config.init.checkpoint_dir=runs/digits
  python -m simclr_jax.evaluate --export=runs/digits_export \
      --config=configs/digits_linear.py
Baselines for the results table (same protocols, no pretraining):
  --config=configs/digits_linear.py:random   the same ResNet, randomly initialised
  --config=configs/digits_linear.py:pixels   flattened pixels (fast probe + kNN)
Add --config.eval.label_fraction=0.1 for the 10%-labels column.
"""

import ml_collections

from configs import digits


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the digits linear-eval config; arg is '', 'random' or 'pixels'."""
  config = digits.get_config()
  config.mode = "linear_eval"
  config.eval.evaluators = ("classifier", "fast_probe", "knn")  # the linear head
  # Linear head: SGD + Nesterov, lr 0.1 x B/256, no weight decay (CIFAR-size).
  config.optim.name = "sgd"
  config.optim.base_lr = 0.1
  config.optim.lr_scaling = "linear"
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.train.global_batch = 128  # <= the 144 examples of the 10% subset
  config.train.epochs = 90
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.aug.crop_area_min = 0.5  # crop + flip only (flip stays off for digits)
  if arg == "random":
    config.init.random = True
  elif arg == "pixels":
    config.eval.raw_pixels = True
    config.eval.evaluators = ("fast_probe", "knn")
  elif arg:
    raise ValueError(f"configs/digits_linear.py: unknown variant {arg!r}; "
                     "allowed: '', 'random', 'pixels'")
  return config
