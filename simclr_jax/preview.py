"""Writes the augmentation preview grid of a config: `python -m simclr_jax.preview`.

The command lives in `simclr_jax.tools.preview`; this module keeps the command
name short.
"""

if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import logs
  logs.quiet_native_logs()  # before jax and TensorFlow load
  from simclr_jax.tools import preview
  preview.cli()
