"""Entry point: python -m simclr_jax.main --config=configs/X.py --workdir=DIR.

Thin by design: parse flags, initialise multi-host JAX when asked, look the
mode up and print its results. TensorFlow is not imported here: only a tf.data
pipeline loads it (`simclr_jax.data.tf_host`, which keeps it off the GPUs/TPUs).
"""

import sys

from simclr_jax.engine import logs

logs.quiet_native_logs()  # before jax and TensorFlow load

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simclr_jax import distributed
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # pylint: disable=g-import-not-at-top
  from simclr_jax import modes
  config = FLAGS.config
  mode = modes.get(config.mode)  # the config itself is checked once resolved
  # TensorFlow, only where a tf.data pipeline is built, is kept off the
  # GPUs/TPUs by `simclr_jax.data.tf_host` before any TF op runs.
  # Multi-host start-up comes before any other JAX use.
  distributed.initialize_from_flags(config)
  import jax
  from simclr_jax.engine import loop
  from simclr_jax.engine import preemption
  # pylint: enable=g-import-not-at-top
  logging.info("JAX process %d/%d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  try:
    results = loop.run(mode, config, FLAGS.workdir)
  except preemption.Preempted as e:
    # A distinct status so schedulers can requeue; rerunning resumes.
    logging.warning("%s", e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  if jax.process_index() == 0:
    modes.print_results(results, config.data.eval_split)


if __name__ == "__main__":
  logs.run_app(main)
