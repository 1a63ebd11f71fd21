"""Entry point: python -m simclr_jax.main --config=configs/X.py --workdir=DIR.

Thin by design: parse flags, keep TensorFlow off the accelerators, initialise
multi-host JAX when asked, then hand the config to the library.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from simclr_jax import distributed

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  config = FLAGS.config
  config_lib.validate(config)  # before any device, data or compile work
  # TensorFlow is only the input pipeline: importing the data package hides
  # GPUs/TPUs from it before any TF op runs.
  from simclr_jax import data  # pylint: disable=g-import-not-at-top,unused-import
  # Multi-host start-up comes before any other JAX use.
  distributed.initialize_from_flags(config)
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import distill  # pylint: disable=g-import-not-at-top
  from simclr_jax import finetune  # pylint: disable=g-import-not-at-top
  from simclr_jax import linear_eval  # pylint: disable=g-import-not-at-top
  from simclr_jax import preemption  # pylint: disable=g-import-not-at-top
  from simclr_jax import pretrain  # pylint: disable=g-import-not-at-top

  logging.info("JAX process %d/%d, %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  from etils import epath  # pylint: disable=g-import-not-at-top
  epath.Path(FLAGS.workdir).mkdir(parents=True, exist_ok=True)  # gs:// too
  try:
    if config.mode == "pretrain":
      results = pretrain.run(config, FLAGS.workdir)
    elif config.mode == "linear_eval":
      results = linear_eval.run(config, FLAGS.workdir)
    elif config.mode == "finetune":
      results = finetune.run(config, FLAGS.workdir)
    elif config.mode == "distill":
      results = distill.run(config, FLAGS.workdir)
    else:
      raise ValueError(f"config.mode={config.mode!r} is not implemented yet")
  except preemption.Preempted as e:
    # A distinct status so schedulers can requeue; rerunning resumes.
    logging.warning("%s", e)
    sys.exit(preemption.PREEMPTED_EXIT_CODE)
  names = (("probe", "online linear probe"), ("knn", "kNN"),
           ("linear_probe", "linear probe"), ("linear", "linear eval"),
           ("finetune", "fine-tuned"), ("student", "distilled student"))  # result keys of the modes
  for key, name in names:
    if jax.process_index() == 0 and key in results:
      print(f"{name} top-1 accuracy on {config.data.eval_split}: "
            f"{results[key]['top1']:.4f}")


if __name__ == "__main__":
  app.run(main)
