"""Fine-tuning on a class-balanced fraction of CIFAR-10's labels (SimCLR v2).

`arg` is the label fraction (default 0.1):
  python -m simclr_jax.main --config=configs/cifar10_finetune.py:0.01 \
      --workdir=runs/cifar10_ft1 --config.init.checkpoint_dir=runs/cifar10
"""

import ml_collections

from configs import cifar10


def get_config(arg: str = "0.1") -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 fine-tuning config for label fraction `arg`."""
  config = cifar10.get_config()
  config.mode = "finetune"
  config.finetune.head_from = 1
  config.eval.label_fraction = float(arg)
  config.optim.name = "lars"
  config.optim.base_lr = 0.005  # x sqrt(batch)
  config.optim.lr_scaling = "sqrt"
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.train.global_batch = 256
  config.train.epochs = 60
  config.train.checkpoint_every_steps = 2000
  config.aug.crop_area_min = 0.08
  config.aug.flip_prob = 0.5
  return config
