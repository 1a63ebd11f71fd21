"""Fine-tuning on ImageNet's 10% labels (SimCLR v2): TFDS imagenet2012_subset/10pct.

As configs/imagenet_finetune_1pct.py, for 30 epochs:
  python -m simclr_jax.main --config=configs/imagenet_finetune_10pct.py \
      --workdir=runs/ft10pct --config.init.export=r50_1x \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from configs import imagenet_finetune_1pct


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet 10%-labels fine-tuning config."""
  config = imagenet_finetune_1pct.get_config()
  config.data.name = "imagenet2012_subset/10pct"
  config.train.epochs = 30
  return config
