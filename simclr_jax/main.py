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
  from simclr_jax import config as config_lib
  config = FLAGS.config
  config_lib.validate(config)  # before any device, data or compile work
  # The model's own field checks too (the models import `config`, so
  # `config.validate` cannot call them), before the workdir is made.
  from simclr_jax.models import simclr as simclr_model
  simclr_model.validate_model_config(
      dict(config.model.items(), stem=config_lib.resolve_stem(config)))
  # TensorFlow, only where a tf.data pipeline is built, is kept off the
  # GPUs/TPUs by `simclr_jax.data.tf_host` before any TF op runs.
  # Multi-host start-up comes before any other JAX use.
  distributed.initialize_from_flags(config)
  import jax
  from etils import epath
  from simclr_jax.engine import loop
  from simclr_jax.engine import preemption
  from simclr_jax.modes import MODES
  from simclr_jax.modes import print_results
  # pylint: enable=g-import-not-at-top
  logging.info("JAX process %d/%d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  epath.Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)  # gs:// too
  try:
    results = loop.run(MODES[config.mode], config, FLAGS.workdir)
  except preemption.Preempted as e:
    # A distinct status so schedulers can requeue; rerunning resumes.
    logging.warning("%s", e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  if jax.process_index() == 0:
    print_results(results, config.data.eval_split)


if __name__ == "__main__":
  logs.run_app(main)
