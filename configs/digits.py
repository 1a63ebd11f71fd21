"""SimCLR on scikit-learn's bundled handwritten digits: the offline demo.

1,437 train / 360 test 8x8 digits upscaled to 16 px, a three-stage ResNet of
one block per stage (16-64 channels, CIFAR stem) trained with LAMB for 300
steps: the recipe of the CPU study (docs/cpu_study.md). Pretrains in about
three minutes on 2 CPU cores:
  python -m simclr_jax.main --config=configs/digits.py --workdir=runs/digits
Quick variant for debugging (a few steps, tiny model):
  python -m simclr_jax.main --config=configs/digits.py:tiny --workdir=runs/tiny
The recipe before the study (a quarter-width ResNet-18, LARS, 150 steps),
with which the older figures of docs/ were measured: `configs/digits.py:r18`.
"""

import ml_collections

from configs import default


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the digits config; `arg` in '', 'tiny' (seconds-long), 'r18'."""
  config = default.get_config()
  config.data.source = "digits"
  config.data.image_size = 16  # 8x8 digits upscaled 2x: enough for the CIFAR stem
  config.aug.color_strength = 0.5
  config.aug.crop_area_min = 0.2  # 8x8 strokes survive only moderate crops
  config.aug.flip_prob = 0.0  # mirrored digits are different symbols

  config.model.depth = 18
  config.model.width = 1
  # The CPU study's winner per minute: one block per stage, three stages.
  # A ResNet-18 at a quarter of the channels (`:r18`) learns no more in 50%
  # more time; the 16 px input ends at 4 px.
  config.model.stage_sizes = (1, 1, 1)
  config.model.base_widths = (16, 32, 64)
  config.model.head_layers = 2

  config.loss.temperature = 0.2
  # LAMB at batch 256: linear probe 98.4 +- 0.4 over seeds 0-2 against
  # 96.9 +- 1.6 for LARS (lr 1.0) with the same net and steps.
  config.optim.name = "lamb"
  config.optim.base_lr = 0.01
  config.optim.warmup_epochs = 5
  config.train.global_batch = 256
  config.train.epochs = 60  # 5 steps an epoch (drop remainder): 300 steps
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  # Watch it learn: kNN monitor, online probe and pictures at steps 100,
  # 200 and 300 (TensorBoard images and <workdir>/pictures/*.png).
  config.train.eval_every_steps = 100
  config.eval.batch_size = 256
  config.eval.knn_k = 20  # 200 of 1,437 memory rows would be 14% of the bank
  # The online probe, kNN and pictures, and at the end the fast (linear) probe.
  config.eval.evaluators = ("classifier", "knn", "fast_probe", "pictures")

  if arg == "tiny":
    config.data.image_size = 16
    config.model.depth = 18
    # Two stages of one block, a handful of channels: compiles in a third
    # less time than four (the tests start dozens of such runs).
    config.model.stage_sizes = (1, 1)
    config.model.base_widths = (8, 16)
    config.train.global_batch = 32
    config.train.steps = 4
    config.train.log_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.optim.warmup_epochs = 0
    # Seconds-long runs: no t-SNE, heatmaps or L-BFGS probe (kNN still runs).
    config.eval.evaluators = ("classifier", "knn")
  elif arg == "r18":
    # The recipe before the CPU study: 150 steps of a quarter-width ResNet-18
    # with LARS; docs/eval.md, supcon.md, pictures.md and performance.md
    # were measured with it.
    config.model.stage_sizes = (2, 2, 2, 2)
    config.model.base_widths = (16, 32, 64, 128)
    config.optim.name = "lars"
    config.optim.base_lr = 1.0
    config.train.epochs = 30
    config.train.eval_every_steps = 50
  elif arg:
    raise ValueError(f"configs/digits.py: unknown variant {arg!r}; "
                     "allowed: '', 'tiny', 'r18'")
  return config
