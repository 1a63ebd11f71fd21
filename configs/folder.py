"""SimCLR on your own images: a folder, with or without class sub-folders.

  python -m simclr_jax.main --config=configs/folder.py \\
      --config.data.data_dir=PATH/TO/IMAGES --workdir=runs/mine

PATH/TO/IMAGES is any tree of JPEG, PNG, GIF, WebP or BMP files of any size
and aspect ratio (unlabelled), or PATH/TO/IMAGES/train/<class>/<image> (and
optionally test/<class>/<image>) for labelled images. Without a `test`
folder, 10% of the images are held out (seeded) to watch the encoder learn:
with labels the kNN monitor and online probe, without them the held-out
contrastive top-1, alignment and uniformity, and the embedding map. Then
export the encoder and embed every image:

  python -m simclr_jax.export --workdir=runs/mine --out=runs/mine/export
  python -m simclr_jax.embed --export=runs/mine/export \\
      --images=PATH/TO/IMAGES --out=runs/mine/embeddings.npz

Small folders work as they are: batch, kNN neighbours and picture sizes
larger than the data are lowered to fit (`data.fit_sizes`), with a log line.
A seconds-long check of the set-up: `--config=configs/folder.py:tiny`; a
run of a few minutes on a CPU (16 px, a three-stage ResNet, 30 epochs):
`--config=configs/folder.py:cpu`.
"""

import ml_collections

from configs import default

# The fields you are most likely to change (or override on the command line,
# e.g. --config.data.image_size=96 --config.train.epochs=200).
IMAGE_SIZE = 64  # network input side; images are cropped and resized to it
EPOCHS = 100  # passes over the training images
BATCH = 256  # images per step over all devices (lowered for small folders)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the own-images config; `arg='tiny'` gives a quick debug run."""
  config = default.get_config()
  config.data.source = "folder"
  config.data.data_dir = ""  # required: --config.data.data_dir=PATH
  config.data.image_size = IMAGE_SIZE
  config.data.folder_labels = "auto"  # or 'subfolders' / 'none' to force
  config.data.holdout_fraction = 0.1  # without a test folder; 0 = no evaluation
  config.data.fit_sizes = True
  config.data.cache = False  # decode files as they are read (any folder size)
  # JPEGs: decode only the crops' window (the same views as the default path).
  config.data.fast_jpeg = True
  # Large photos: True decodes crop windows at 1/2, 1/4 or 1/8 scale when
  # every crop is that many times the image size: several times faster on
  # camera photos, views close to (not equal to) the official resampling.
  config.data.fast_jpeg_dct = False

  config.aug.color_strength = 1.0  # photographs: ImageNet-strength jitter
  config.aug.blur = True
  config.aug.eval_crop_proportion = 1.0  # centre square of the shorter side

  config.model.depth = 18
  config.model.head_layers = 2
  config.loss.temperature = 0.2
  config.optim.name = "lars"
  config.optim.base_lr = 1.0
  config.optim.warmup_epochs = 10

  config.train.global_batch = BATCH
  config.train.epochs = EPOCHS
  config.train.log_every_steps = 20
  config.train.checkpoint_every_steps = 500
  config.train.eval_every_steps = 500
  # Named by the first ETA when this run would take hours on a CPU.
  config.train.cpu_variant = "configs/folder.py:cpu"
  config.eval.batch_size = 64
  config.eval.knn_k = 20
  config.viz.tsne_points = 1000

  if arg == "tiny":
    config.data.image_size = 16
    # Two stages of one block, a handful of channels: compiles in a third
    # less time than four (the tests start dozens of such runs).
    config.model.stage_sizes = (1, 1)
    config.model.base_widths = (8, 16)
    config.train.global_batch = 16
    config.train.steps = 4
    config.train.eval_every_steps = 2
    config.train.checkpoint_every_steps = 2
    config.optim.warmup_epochs = 0
    config.eval.batch_size = 16
  elif arg == "cpu":
    config.train.cpu_variant = ""  # this is it
    config.data.image_size = 16
    # Three stages of one block, 32-128 channels: at 16 px it learns more
    # per CPU minute than a quarter-width ResNet-18 (12 points of kNN and 11
    # of linear probe more on photographs and textures, seeds 0-2, in 13%
    # less time; docs/cpu_study.md).
    config.model.stage_sizes = (1, 1, 1)
    config.model.base_widths = (32, 64, 128)
    config.aug.color_strength = 0.5  # small images: CIFAR-strength jitter
    config.aug.blur = False  # a blur kernel of 10% of 16 px is under 2 px
    config.train.epochs = 30
    config.optim.warmup_epochs = 5
    config.train.eval_every_steps = 100
  elif arg:
    raise ValueError(f"configs/folder.py: unknown variant {arg!r}; allowed: "
                     "'', 'tiny', 'cpu'")
  return config
