"""Writes the augmentation preview grid of a config as a PNG.

  python -m simclr_jax.preview --config=configs/digits.py --out=views.png
"""

from absl import app
from absl import flags
from absl import logging

from simclr_jax.data import preview
from simclr_jax.engine import logs


def main(argv) -> None:
  """Writes the preview of --config to --out."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  grid = preview.write_preview(fv.config, None, fv.out)
  logging.info("wrote %s (%d x %d px)", fv.out, grid.shape[1], grid.shape[0])
  print(f"wrote {fv.out}")


def cli() -> None:
  """The command line: python -m simclr_jax.preview."""
  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Configuration file.",
                                  lock_config=True)
  flags.DEFINE_string("out", "views.png", "PNG file to write.")
  flags.mark_flags_as_required(["config"])
  logs.run_app(main)
