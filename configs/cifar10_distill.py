"""Distillation on CIFAR-10: a fine-tuned teacher export trains a smaller student.

SimCLR v2's third step on CIFAR-10: the student (a ResNet-18 with the CIFAR
stem, randomly initialised) learns from the teacher's class distribution at
temperature 1 on the 50,000 training images, labels unused. The teacher is an
export with a classifier head (e.g. a fine-tuned ResNet-50). Needs the TFDS
`cifar10` data:
  python -m simclr_jax.main --config=configs/cifar10_distill.py \
      --workdir=runs/cifar10_distill --config.data.data_dir=$TFDS_DATA_DIR \
      --config.distill.teacher_export=runs/cifar10_finetune/export
"""

import ml_collections

from configs import cifar10


def get_config() -> ml_collections.ConfigDict:
  """Returns the CIFAR-10 distillation config."""
  config = cifar10.get_config()
  config.mode = "distill"
  config.distill.teacher_export = "runs/cifar10_finetune/export"
  config.distill.temperature = 1.0  # SimCLR v2: tau = 1
  config.distill.label_weight = 0.0  # unlabelled images only
  config.model.depth = 18  # a smaller student than the ResNet-50 teacher
  config.model.head_layers = 1  # unused by distillation; kept minimal
  config.model.proj_dim = 16
  config.train.probe = False
  config.aug.crop_area_min = 0.08  # crop + flip (the supervised iterator)
  config.aug.flip_prob = 0.5
  config.optim.name = "lars"
  config.optim.base_lr = 1.0  # x B/256
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 5
  config.train.global_batch = 1024
  config.train.epochs = 200
  config.train.eval_every_steps = 2000
  return config
