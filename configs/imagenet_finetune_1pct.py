"""Fine-tuning on ImageNet's 1% labels (SimCLR v2): TFDS imagenet2012_subset/1pct.

LARS, lr 0.005 x sqrt(B) with B = 1024, no weight decay, 60 epochs, from the
first projection-head layer.
  python -m simclr_jax.main --config=configs/imagenet_finetune_1pct.py \
      --workdir=runs/ft1pct --config.init.export=r50_1x \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from configs import imagenet


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet 1%-labels fine-tuning config."""
  config = imagenet.get_config()
  config.mode = "finetune"
  config.data.name = "imagenet2012_subset/1pct"  # the official 1% image list
  config.finetune.head_from = 1
  config.optim.name = "lars"
  config.optim.base_lr = 0.005
  config.optim.lr_scaling = "sqrt"
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.train.global_batch = 1024
  config.train.epochs = 60
  config.train.checkpoint_every_steps = 1000
  config.aug.crop_area_min = 0.08
  config.aug.flip_prob = 0.5
  return config
