"""Linear evaluation on ImageNet (SimCLR v1 appendix B.6), e.g. of a converted checkpoint.

SGD + Nesterov, lr 0.1 x B/256, weight decay 1e-6, batch 4096, 90 epochs,
random crop + flip, centre crop 0.875 at evaluation.
  python -m simclr_jax.convert --tf2_checkpoint=r50_1x_sk0/<...>/ckpt-N --out=r50_1x
  python -m simclr_jax.evaluate --export=r50_1x --config=configs/imagenet_linear.py \
      --config.data.data_dir=$TFDS_DATA_DIR
"""

import ml_collections

from configs import imagenet


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet linear-eval config."""
  config = imagenet.get_config()
  config.mode = "linear_eval"
  config.eval.evaluators = ("classifier",)  # kNN/fast probe: too large for host memory
  config.optim.name = "sgd"
  config.optim.base_lr = 0.1
  config.optim.lr_scaling = "linear"
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 0
  config.train.global_batch = 4096
  config.train.epochs = 90
  config.train.checkpoint_every_steps = 1000
  config.aug.crop_area_min = 0.08
  config.aug.flip_prob = 0.5
  return config
