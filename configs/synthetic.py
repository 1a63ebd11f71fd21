"""Pretraining on the synthetic source: benchmarks and debugging, no data.

Images and labels are made by JAX on the devices (`simclr_jax.data.synthetic`),
so this runs on a machine with no dataset and no TensorFlow. Its accuracies
say whether the program learns, never how good a representation is.
  python -m simclr_jax.main --config=configs/synthetic.py --workdir=runs/synth
ResNet-50 at 224 px in bfloat16, the ImageNet recipe's shape (the default);
a seconds-long run of a tiny model (tests, the device check's dry run):
  python -m simclr_jax.main --config=configs/synthetic.py:tiny --workdir=runs/t
"""

import ml_collections

from configs import default


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the synthetic config: '' = ResNet-50/224/bf16, 'tiny' = tests."""
  config = default.get_config()
  config.data.source = "synthetic"
  # No pictures (they read image files) and no kNN (10,000 eval images at
  # 224 px per evaluation).
  config.eval.evaluators = ("classifier",)

  config.data.image_size = 224
  config.data.synthetic_num_classes = 1000  # ImageNet's label space
  config.data.synthetic_train_examples = 1_281_167  # ImageNet-1k's epoch
  config.data.synthetic_eval_examples = 10_000
  config.data.synthetic_grid = 8  # 28 px colour cells at 224 px
  config.aug.on_device = True  # flip/colour/blur in the step, as on a GPU box
  config.aug.blur = True
  config.aug.color_strength = 1.0
  config.model.depth = 50
  config.model.dtype = "bfloat16"
  config.model.head_layers = 3  # SimCLR v2 head
  config.loss.temperature = 0.1
  config.optim.base_lr = 0.3
  config.train.global_batch = 256
  config.train.steps = 1000
  config.train.log_every_steps = 100
  config.train.checkpoint_every_steps = 1000
  config.eval.batch_size = 256

  if arg == "tiny":
    config.data.image_size = 16
    config.data.synthetic_num_classes = 4
    config.data.synthetic_train_examples = 64
    config.data.synthetic_eval_examples = 24  # the last eval batch is padded
    config.data.synthetic_grid = 4
    config.aug.on_device = False
    config.aug.blur = False
    config.model.depth = 18
    # Two stages of one block, a handful of channels: compiles in a third
    # less time than four (the tests start dozens of such runs).
    config.model.stage_sizes = (1, 1)
    config.model.base_widths = (8, 16)
    config.model.dtype = "float32"
    config.model.head_layers = 2
    config.model.proj_dim = 16
    config.optim.warmup_epochs = 0
    config.train.global_batch = 8
    config.train.steps = 4
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.eval.evaluators = ("classifier", "knn")
    config.eval.knn_k = 5
    config.eval.batch_size = 16
  elif arg:
    raise ValueError(f"configs/synthetic.py: unknown variant {arg!r}; "
                     "allowed: '', 'tiny'")
  return config
