"""Converts an official SimCLR TF2 checkpoint into an export: `python -m simclr_jax.convert`.

The command lives in `simclr_jax.tools.convert`; this module keeps the command
name short.
"""

if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import logs
  logs.quiet_native_logs()  # before jax and TensorFlow load
  from simclr_jax.tools import convert
  convert.cli()
