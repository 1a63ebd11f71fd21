"""Embeds every image of a folder with an export: `python -m simclr_jax.embed`.

The command lives in `simclr_jax.tools.embed`; this module keeps the command
name short.
"""

if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import logs
  logs.quiet_native_logs()  # before jax and TensorFlow load
  from simclr_jax.tools import embed
  embed.cli()
