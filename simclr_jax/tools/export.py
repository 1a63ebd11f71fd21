"""Exports a run's checkpoint as an encoder artifact.

  python -m simclr_jax.export --workdir=runs/digits --out=runs/digits_export

writes parameters and BatchNorm statistics (orbax), the model config as JSON
and the image convention (see `exports.format.save_export`). The official
TF2 converter (`python -m simclr_jax.convert`) writes the same format, so
every evaluation runs on either.
"""

import os
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

from simclr_jax import config as config_lib
from simclr_jax.engine import logs
from simclr_jax.engine import results as results_lib
from simclr_jax.evals import encoders
from simclr_jax.exports import format as export_lib
from simclr_jax.exports import writers


def export_workdir(workdir: str, out: str, step: int = 0) -> Dict[str, Any]:
  """Writes the export of a pretraining checkpoint.

  Args:
    workdir: the pretraining workdir.
    out: the export directory (replaced atomically if it exists).
    step: checkpoint step; 0 = the newest.

  Returns:
    The export's meta data.
  """
  if not os.path.isdir(workdir):
    config_lib.fail("--workdir", workdir, "no such directory")
  if not os.path.isfile(os.path.join(workdir, results_lib.CONFIG_FILE)):
    config_lib.fail("--workdir", workdir, f"has no {results_lib.CONFIG_FILE}: "
                    "it is not a run directory of python -m simclr_jax.main")
  if step < 0:
    config_lib.fail("--step", step, "an integer >= 0 is required (0 = the "
                    "newest checkpoint)")
  export_lib.check_export_target(os.path.abspath(out))  # before any work
  variables, model_cfg, num_classes, step = encoders.load_checkpoint(workdir,
                                                                     step)
  pre = results_lib.read_workdir_config(workdir)
  export_lib.save_export(out, variables, model_cfg, num_classes,
                       pre.data.image_size, extra={
                           "source": "simclr_jax pretraining",
                           "workdir": os.path.abspath(workdir), "step": step,
                           "dataset": pre.data.name or pre.data.source},
                       crop_proportion=pre.aug.eval_crop_proportion)
  return export_lib.read_export_meta(out)


def main(argv) -> None:
  """Exports --workdir (its newest checkpoint, or --step) to --out."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  if fv.format != "export":  # ONNX / PyTorch files (simclr_jax.exports)
    print("\n".join(writers.export_as(fv.format, fv.out, fv.workdir,
                                       fv.export, fv.step)))
    return
  if not fv.workdir or fv.export:
    writers.fail_jax_source(fv.workdir, fv.export)
  meta = export_workdir(fv.workdir, fv.out, fv.step)
  logging.info("wrote export %s (step %s)", fv.out, meta["extra"]["step"])
  print(f"exported {fv.workdir} step {meta['extra']['step']} to {fv.out}")


def cli() -> None:
  """The command line: python -m simclr_jax.export."""
  flags.DEFINE_string("workdir", None, "pretraining workdir to export")
  flags.DEFINE_string("out", None, "export directory to write")
  flags.DEFINE_integer("step", 0, "checkpoint step (0 = newest)")
  flags.DEFINE_string("format", "export", "export (JAX export directory) | "
                      "onnx (FILE.onnx) | torch | torchvision "
                      "(FILE.safetensors)")
  flags.DEFINE_string("export", None, "an existing export to write as "
                      "--format=onnx|torch|torchvision instead of --workdir")
  flags.mark_flags_as_required(["out"])
  logs.run_app(main)
