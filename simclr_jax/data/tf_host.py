"""TensorFlow for the host input pipeline, kept off the accelerators.

Every tf.data module of this package (`sources`, `folders`, `pipeline`,
`augment`, `photometric`, `fast`) takes `tf` from here, so whichever of them
loads first hides the GPUs/TPUs from TensorFlow before any TF op runs (JAX
owns them) and filters TensorFlow's native start-up lines. Nothing outside those modules
imports TensorFlow: the models, losses, steps, engine, checkpoints and exports
run on a machine where it is not installed, and the data package imports these
modules only when a tf.data pipeline is built.
"""

from simclr_jax.engine import logs as _logs

with _logs.native_stderr_filtered():  # TensorFlow's native start-up lines
  import tensorflow as tf  # pylint: disable=g-import-not-at-top


def _hide_accelerators_from_tensorflow() -> None:
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # Already initialised, or no such device type in this build.
      pass


_hide_accelerators_from_tensorflow()

__all__ = ["tf"]
