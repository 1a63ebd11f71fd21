"""Entry point: python -m simclr_jax.main --config=configs/X.py --workdir=DIR.

Thin by design: parse flags, keep TensorFlow off the accelerators, initialise
multi-host JAX when asked, then hand the config to the library.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  # TensorFlow is only the input pipeline: it must not grab GPU/TPU memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices(
      "TPU") else None
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import pretrain  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  config_lib.validate(config)  # before any device or data work
  logging.info("JAX process %d/%d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  os.makedirs(FLAGS.workdir, exist_ok=True)
  if config.mode == "pretrain":
    results = pretrain.run(config, FLAGS.workdir)
  elif config.mode == "distill":
    from simclr_jax import distill  # pylint: disable=g-import-not-at-top
    results = distill.run(config, FLAGS.workdir)
    if jax.process_index() == 0:
      print(f"student top-1 accuracy on {config.data.eval_split}: "
            f"{results['student']['top1']:.4f}")
  else:
    raise ValueError(f"config.mode={config.mode!r} is not implemented yet")
  if jax.process_index() == 0 and "probe" in results:
    print(f"linear probe top-1 accuracy on {config.data.eval_split}: "
          f"{results['probe']['top1']:.4f}")


if __name__ == "__main__":
  app.run(main)
