"""Draws the embedding map and similarity heatmap of an export or a run: `python -m simclr_jax.visualize`.

The command lives in `simclr_jax.tools.visualize`; this module keeps the command
name short.
"""

if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import logs
  logs.quiet_native_logs()  # before jax and TensorFlow load
  from simclr_jax.tools import visualize
  visualize.cli()
