"""SimCLR v2 on ImageNet (ILSVRC-2012): batch 4096, T=0.1, LARS lr 0.075 x sqrt(B).

ResNet-50, 3-layer projection head, colour strength 1.0, blur on, 100 epochs,
weight decay 1e-6. Needs the TFDS `imagenet2012` data prepared by hand:
  python -m simclr_jax.main --config=configs/imagenet.py --workdir=/mnt/shared/runs/simclr_r50 \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet pretraining config."""
  config = default.get_config()
  config.data.source = "tfds"
  config.data.name = "imagenet2012"
  config.data.train_split = "train"
  config.data.eval_split = "validation"
  config.data.image_size = 224
  config.data.cache = False
  config.aug.color_strength = 1.0
  config.aug.blur = True
  config.aug.eval_crop_proportion = 0.875
  # The fastest input path tested equal to the reference: on a GPU/TPU the
  # host only decodes the crop windows and resizes, the step does the rest;
  # on a CPU the host does everything, decoding only the crop windows.
  config.aug.on_device_on_accelerators = True
  config.data.fast_jpeg = True
  config.model.depth = 50
  config.model.stem = "imagenet"
  config.model.head_layers = 3
  config.loss.temperature = 0.1
  config.optim.name = "lars"
  config.optim.base_lr = 0.075
  config.optim.lr_scaling = "sqrt"
  config.optim.weight_decay = 1e-6
  # The official objective: the TF2 loss scale (2x the paper's L) and the
  # probe head's weight decay (docs/official_deviations.md).
  config.loss.official_scale = True
  config.optim.decay_sup_head = True
  config.optim.warmup_epochs = 10
  config.train.global_batch = 4096
  config.train.epochs = 100
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_steps = 5000
  config.eval.batch_size = 1024
  return config
