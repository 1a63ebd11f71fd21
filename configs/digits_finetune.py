"""Fine-tuning a digits encoder on 10% of the labels (SimCLR v2 protocol).

  python -m simclr_jax.main --config=configs/digits_finetune.py \
      --workdir=runs/digits_ft10 --config.init.checkpoint_dir=runs/digits
"""

import ml_collections

from configs import digits


def get_config() -> ml_collections.ConfigDict:
  """Returns the digits fine-tuning config."""
  config = digits.get_config()
  config.mode = "finetune"
  config.eval.evaluators = ("auto",)  # the fine-tuned classifier
  config.finetune.head_from = 1  # keep the first projection-head layer (v2)
  config.eval.label_fraction = 0.1  # seeded, class-balanced labelled subset
  config.optim.name = "lars"
  config.optim.base_lr = 0.005  # x sqrt(batch), as SimCLR v2 fine-tuning
  config.optim.lr_scaling = "sqrt"
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.train.global_batch = 64
  config.train.epochs = 60
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 1000
  config.aug.crop_area_min = 0.5  # crop + flip only
  return config
