"""Linear evaluation on CIFAR-10 (SimCLR appendix B.5): frozen encoder, linear head.

SGD + Nesterov, lr 0.1 x B/256, no weight decay, 100 epochs, crop + flip.
  python -m simclr_jax.main --config=configs/cifar10_linear.py \
      --workdir=runs/cifar10_linear --config.init.checkpoint_dir=runs/cifar10
  python -m simclr_jax.evaluate --export=EXPORT --config=configs/cifar10_linear.py
"""

import ml_collections

from configs import cifar10


def get_config() -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 linear-eval config."""
  config = cifar10.get_config()
  config.mode = "linear_eval"
  config.eval.evaluators = ("classifier", "knn")
  config.optim.name = "sgd"
  config.optim.base_lr = 0.1
  config.optim.lr_scaling = "linear"
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 0.0
  config.optim.warmup_epochs = 0
  config.train.global_batch = 1024
  config.train.epochs = 100
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 2000
  config.aug.crop_area_min = 0.08
  config.aug.flip_prob = 0.5
  return config
