r"""Draws the embedding map and similarity heatmap of an export or a run.

  python -m simclr_jax.visualize --config=configs/digits.py \
      --export=EXPORT_DIR --out_dir=pictures
  python -m simclr_jax.visualize --config=configs/digits.py \
      --workdir=runs/digits --out_dir=runs/digits/pictures_now
"""

from typing import Dict

import ml_collections
from absl import flags

from simclr_jax import config as config_lib
from simclr_jax import parallel
from simclr_jax.engine import logs
from simclr_jax.engine import writer as writer_lib
from simclr_jax.evals import encoders
from simclr_jax.evals import pictures
from simclr_jax.models import build_model

AXIS = parallel.AXIS


def _load(config, export_dir: str, workdir: str, mesh):
  """(config, model, replicated variables, step) of an export or a run."""
  config = config.copy_and_resolve_references()
  if export_dir:
    model, variables, meta = encoders.load_export_model(export_dir, "export",
                                                        axis_name=AXIS)
    config.data.image_size = int(meta["image_size"])  # the export's input
    step = int(meta.get("extra", {}).get("step", 0) or 0)
  else:  # the newest checkpoint of a pretraining run
    variables, model_cfg, num_classes, step = encoders.load_checkpoint(workdir)
    model = build_model(model_cfg, num_classes, axis_name=AXIS)
  return config, model, parallel.replicate(mesh, variables), step


def run_on_saved(config: ml_collections.ConfigDict, out_dir: str,
                 export_dir: str = "", workdir: str = "") -> Dict[str, str]:
  """Writes the pictures of an export or of a run's newest checkpoint.

  The embedding map and the similarity heatmap go to `out_dir` as PNGs and as
  TensorBoard images.

  Args:
    config: the configuration naming the dataset, augmentations and `viz`
      (for an export, the input size is taken from the export).
    out_dir: directory for the PNGs and the TensorBoard events.
    export_dir: a `simclr_jax.exports.format.save_export` directory, or ''.
    workdir: a pretraining run directory (used when `export_dir` is '').

  Returns:
    {picture name: PNG path} on process 0.
  """
  if bool(export_dir) == bool(workdir):
    raise config_lib.ConfigError(
        f"--export={export_dir!r}, --workdir={workdir!r} is invalid: give "
        "exactly one of them")
  mesh = parallel.make_mesh()
  config, model, variables, step = _load(config, export_dir, workdir, mesh)
  writer = writer_lib.Writer(out_dir)
  names = pictures.Pictures(config, model, mesh, out_dir, writer).write(
      step, variables)
  writer.close()
  return names


def main(argv) -> None:
  """Writes the pictures of --export or --workdir to --out_dir."""
  from absl import app  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  for path in run_on_saved(fv.config, fv.out_dir, fv.export,
                           fv.workdir).values():
    print(f"wrote {path}")


def cli() -> None:
  """The command line: python -m simclr_jax.visualize."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Configuration file (data, "
                                  "aug, eval, viz).", lock_config=True)
  flags.DEFINE_string("export", "", "export directory to visualise, or ...")
  flags.DEFINE_string("workdir", "", "... a pretraining run (newest checkpoint)")
  flags.DEFINE_string("out_dir", None, "directory for PNGs and TensorBoard")
  flags.mark_flags_as_required(["config", "out_dir"])
  logs.run_app(main)
