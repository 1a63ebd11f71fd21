"""SimCLR on CIFAR-10: the official CIFAR recipe (SimCLR v1 appendix B.9).

ResNet-50 (CIFAR stem), batch 1024, NT-Xent T=0.5, LARS lr 1.0 x B/256,
colour strength 0.5, no blur, 1000 epochs. Needs the TFDS `cifar10` data:
  python -m simclr_jax.main --config=configs/cifar10.py --workdir=runs/cifar10 \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 pretraining config."""
  config = default.get_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.image_size = 32
  config.aug.color_strength = 0.5
  config.aug.blur = False
  # On a GPU/TPU the host only crops; flip, colour and grayscale run in the
  # train step (tested against the reference's statistics). CPU: host path.
  config.aug.on_device_on_accelerators = True
  config.model.depth = 50
  config.model.stem = "cifar"
  config.model.head_layers = 2
  config.loss.temperature = 0.5
  config.optim.name = "lars"
  config.optim.base_lr = 1.0
  config.optim.lr_scaling = "linear"
  config.optim.weight_decay = 1e-6
  # The official objective: the TF2 loss scale (2x the paper's L) and the
  # probe head's weight decay (docs/official_deviations.md).
  config.loss.official_scale = True
  config.optim.decay_sup_head = True
  config.optim.warmup_epochs = 10
  config.train.global_batch = 1024
  config.train.epochs = 1000
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.train.eval_every_steps = 5000
  return config
