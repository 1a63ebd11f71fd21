"""Supervised contrastive pretraining (SupCon) on CIFAR-10.

The SimCLR CIFAR recipe (configs/cifar10.py: ResNet-50 with the CIFAR stem,
batch 1024, LARS, 1000 epochs) with the SupCon loss: L_out at the SupCon
paper's temperature 0.1, two views. Evaluate with a linear classifier on the frozen encoder.
Needs the TFDS `cifar10` data:
  python -m simclr_jax.main --config=configs/cifar10_supcon.py \
      --workdir=runs/cifar10_supcon --config.data.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from configs import cifar10


def get_config() -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 SupCon pretraining config."""
  config = cifar10.get_config()
  config.loss.name = "supcon"
  config.loss.supcon_variant = "out"  # L_out (mean over positives outside the log)
  config.loss.temperature = 0.1  # SupCon paper, CIFAR
  # The SupContrast reference objective: its loss x T / 0.07, not SimCLR's 2x.
  config.loss.base_temperature = 0.07
  config.loss.official_scale = False
  config.aug.num_views = 2
  return config
