"""SimCLR on scikit-learn's bundled handwritten digits: the offline demo.

1,437 train / 360 test 8x8 digits upscaled to 16 px, a narrow ResNet-18 with
the CIFAR stem. Pretrains in a few minutes on 2 CPU cores:
  python -m simclr_jax.main --config=configs/digits.py --workdir=runs/digits
Quick variant for debugging (a few steps, tiny model):
  python -m simclr_jax.main --config=configs/digits.py:tiny --workdir=runs/tiny
"""

import ml_collections

from configs import default


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the digits config; `arg='tiny'` gives a seconds-long debug run."""
  config = default.get_config()
  config.data.source = "digits"
  config.data.image_size = 16  # 8x8 digits upscaled 2x: enough for the CIFAR stem
  config.aug.color_strength = 0.5
  config.aug.crop_area_min = 0.2  # 8x8 strokes survive only moderate crops
  config.aug.flip_prob = 0.0  # mirrored digits are different symbols

  config.model.depth = 18
  config.model.width = 1
  # A narrow ResNet-18 (1/4 of the channels) so the demo runs in minutes on CPU.
  config.model.base_widths = (16, 32, 64, 128)
  config.model.head_layers = 2

  config.loss.temperature = 0.2
  config.optim.name = "lars"
  config.optim.base_lr = 1.0
  config.optim.warmup_epochs = 5
  config.train.global_batch = 256
  config.train.epochs = 30
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 200
  # Watch it learn: kNN monitor, online probe and pictures at steps 50, 100
  # and at the end (TensorBoard images and <workdir>/pictures/*.png).
  config.train.eval_every_steps = 50
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
  elif arg:
    raise ValueError(f"configs/digits.py: unknown variant {arg!r}; allowed: '', 'tiny'")
  return config
