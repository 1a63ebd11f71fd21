"""The nearest images of a query as a PNG and CSV: `python -m simclr_jax.neighbors`.

The command lives in `simclr_jax.tools.neighbors`; this module keeps the command
name short.
"""

if __name__ == "__main__":
  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import logs
  logs.quiet_native_logs()  # before jax and TensorFlow load
  from simclr_jax.tools import neighbors
  neighbors.cli()
