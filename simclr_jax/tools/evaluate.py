"""Evaluates an export (ours or a converted official checkpoint) with a config.

  python -m simclr_jax.evaluate --export=EXPORT --config=configs/digits_linear.py

runs linear eval, the fast probe and kNN (mode linear_eval) or fine-tuning
(mode finetune) through the one training loop and writes the results JSON to
--workdir (default EXPORT_eval). The image size and evaluation crop come from
the export (its recorded preprocessing) unless given on the command line.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

from simclr_jax.engine import logs


# Config fields the export's recorded preprocessing sets, and its keys.
_FROM_EXPORT = (("data.image_size", "image_size"),
                ("aug.eval_crop_proportion", "crop_proportion"))


def _take_preprocessing_from_export(config, export: str, argv) -> None:
  """Sets image size and crop from the export, unless given as flags."""
  from simclr_jax.exports import format as export_lib  # pylint: disable=g-import-not-at-top
  try:
    pre = export_lib.preprocessing(export_lib.read_export_meta(export))
  except (ValueError, OSError):
    return  # not an export: the loader names the problem
  for field, key in _FROM_EXPORT:
    if any(a.startswith(f"--config.{field}=") for a in argv):
      continue
    section, name = field.split(".")
    value = type(config[section][name])(pre[key])
    if value != config[section][name]:
      logging.info("%s=%s from the export (the config says %s)", field, value,
                   config[section][name])
      config[section][name] = value


def _check_export(export: str) -> None:
  """Refuses an --export that is not an export, before anything is written."""
  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib
  from simclr_jax.exports import format as export_lib
  # pylint: enable=g-import-not-at-top
  if not os.path.isdir(export):
    config_lib.fail("--export", export, "no such directory")
  try:
    export_lib.read_export_meta(export)
  except (ValueError, OSError) as e:
    raise config_lib.ConfigError(" ".join(str(e).split())) from e


def main(argv) -> None:
  """Evaluates --export with --config; prints top-1 of every protocol."""
  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib
  from simclr_jax import data  # pylint: disable=unused-import  (TF off the GPUs)
  import jax
  from simclr_jax.engine import loop
  from simclr_jax import modes
  # pylint: enable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  _check_export(fv.export)
  config = fv.config
  with config.unlocked():
    config.init.export = fv.export
  _take_preprocessing_from_export(config, fv.export, sys.argv)
  mode = modes.get(config.mode)
  if not mode.takes_encoder:
    allowed = tuple(n for n, m in modes.MODES.items() if m.takes_encoder)
    config_lib.fail("mode", config.mode, f"allowed values here are {allowed}")
  workdir = fv.workdir or fv.export.rstrip("/") + "_eval"
  results = loop.run(mode, config, workdir)
  if jax.process_index() == 0:
    modes.print_results(results, config.data.eval_split)
    print(f"results: {os.path.join(workdir, mode.name + '_results.json')}")


def cli() -> None:
  """The command line: python -m simclr_jax.evaluate."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "evaluation config file "
                                  "(mode linear_eval or finetune)")
  flags.DEFINE_string("export", None, "export directory to evaluate")
  flags.DEFINE_string("workdir", None, "results directory (default: "
                      "EXPORT_eval)")
  flags.mark_flags_as_required(["config", "export"])
  logs.run_app(main)
