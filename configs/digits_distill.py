"""Distillation on digits: a frozen teacher export trains a student from scratch.

The student (by default the teacher's net, the three-stage ResNet of
configs/digits.py; `:small` gives it half the channels) sees the crop+flip
view the teacher sees and learns from the teacher's softened class
distribution only (no labels).
Make a teacher first, e.g. the SupCon encoder with its online linear probe:
  python -m simclr_jax.main --config=configs/digits_supcon.py --workdir=runs/digits_supcon
  python -m simclr_jax.export --workdir=runs/digits_supcon \
      --out=runs/digits_supcon_teacher
then distil:
  python -m simclr_jax.main --config=configs/digits_distill.py --workdir=runs/digits_distill \
      --config.distill.teacher_export=runs/digits_supcon_teacher
Quick variant for tests (a few steps, tiny student): `configs/digits_distill.py:tiny`.
"""

import ml_collections

from configs import digits


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  """Returns the digits distillation config; arg in '', 'small', 'tiny'."""
  if arg not in ("", "small", "tiny"):
    raise ValueError(f"configs/digits_distill.py: unknown variant {arg!r}; "
                     "allowed: '', 'small', 'tiny'")
  config = digits.get_config("tiny" if arg == "tiny" else "")
  config.mode = "distill"
  config.eval.evaluators = ("auto",)  # the student, and the teacher
  config.distill.teacher_export = "runs/digits_supcon_teacher"
  config.distill.temperature = 1.0  # SimCLR v2 found tau = 1 best
  config.distill.label_weight = 0.0  # unlabelled: the teacher is the only signal
  config.train.probe = False  # the student's classifier is trained, not probed
  config.model.head_layers = 1  # unused by distillation; kept minimal
  config.model.proj_dim = 16
  # The crop range of the digits fine-tuning (configs/digits_finetune.py): the
  # teacher is trained on, and reliable on, crops of at least half a digit.
  config.aug.crop_area_min = 0.5
  if arg != "tiny":
    config.train.epochs = 60  # 300 steps; one view per image
    config.train.checkpoint_every_steps = 100
  if arg == "small":
    config.model.base_widths = (8, 16, 32)  # half the teacher's channels
  return config
