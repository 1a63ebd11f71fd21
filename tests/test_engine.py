"""The one loop, for every mode: results, checkpoints, events, resume.

Each of the four modes runs a few steps on tiny digits data through
`engine.loop.run`; a SIGTERM in the middle of each is resumed to the same
final state as an uninterrupted run; each refuses checkpoints of another
architecture unless `train.start_over` moves them aside. The stop signal
against a slow device and through the command line: `test_loop_signals.py`.
"""

import glob
import os
import shutil
import signal

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import eval_helpers
from engine_helpers import ALL_MODES
from engine_helpers import MAIN_RESULT
from engine_helpers import mode_config
from engine_helpers import STEPS
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import loop
from simclr_jax.engine import preemption
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import MODES
from simclr_jax.modes import RESULT_NAMES


class _SignalAt(preemption.PreemptionGuard):
  """The real handlers, plus a real SIGTERM sent to this process at `step`."""

  def __init__(self, step):
    super().__init__()
    self._at = step

  def should_stop(self, step, sync):
    if step == self._at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().should_stop(step, sync)


def _stored(workdir, step):
  """A checkpoint's arrays as stored, as NumPy."""
  path = os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR, str(step),
                      "default")
  with ocp.StandardCheckpointer() as ckptr:
    return jax.tree.map(np.asarray, ckptr.restore(path))


def _event_tags(workdir):
  tags = set()
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.fixture(scope="module")
def references(sources, tiny_pretrain_run, tmp_path_factory):
  """Uninterrupted runs of every mode: {mode: (workdir, results)}; the
  pretraining one is the session's shared run of the same config."""
  out = {"pretrain": tiny_pretrain_run}
  for mode in ALL_MODES[1:]:
    workdir = str(tmp_path_factory.mktemp(f"ref_{mode}"))
    build = MODES[mode].build

    def spy(config, *args, _build=build, _mode=mode):
      BUILT_WITH[_mode] = config
      return _build(config, *args)

    MODES[mode].build = spy  # the instance's, removed below
    try:
      out[mode] = workdir, loop.run(MODES[mode], mode_config(mode, sources),
                                    workdir)
    finally:
      del MODES[mode].build
  return out


BUILT_WITH = {}  # mode -> the config its build() was given


@pytest.mark.quick
def test_registry_names_every_mode_and_result():
  assert tuple(MODES) == ALL_MODES
  named = {key for key, _ in RESULT_NAMES}
  assert set(MAIN_RESULT.values()) <= named


def _reference_accuracy(mode, workdir, sources):
  """(top1, top5) of the final checkpoint, recomputed on one host in NumPy.

  The logits come from `model.apply` on all 360 test images in one unpadded
  batch on one device (no mask, no padding, no psum), from the variables as
  stored at the last step; linear evaluation's head is applied in float64
  NumPy on the frozen encoder's features. The counting is NumPy's.
  """
  from simclr_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from simclr_jax.evals import encoders  # pylint: disable=g-import-not-at-top
  config = mode_config(mode, sources)
  full = next(data_lib.make_eval_iterator(config.data, config.aug, "test",
                                          360))
  images, labels = full["images"], np.asarray(full["labels"])
  stored = _stored(workdir, STEPS)
  variables = {"params": stored["params"],
               "batch_stats": stored["batch_stats"]}
  if mode == "pretrain":
    model = build_model(model_config(config), num_classes=10)
    logits = model.apply(variables, images, train=False)["logits"]
  elif mode == "linear_eval":
    encoder = _stored(sources["pretrain"], 4)
    enc_model = build_model(model_config(eval_helpers.tiny_config()),
                            num_classes=10)
    h = enc_model.apply({"params": encoder["params"],
                         "batch_stats": encoder["batch_stats"]}, images,
                        False, method=enc_model.encode)
    head = stored["params"]["dense"]
    logits = (np.asarray(h, np.float64) @ np.asarray(head["kernel"],
                                                     np.float64)
              + np.asarray(head["bias"], np.float64))
  else:  # finetune, distill: the model the export describes
    model, _, _ = encoders.load_export_model(os.path.join(workdir, "export"))
    logits = model.apply(variables, images, train=False)["logits"]
  logits = np.asarray(logits, np.float64)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  return (np.mean(np.argmax(logits, 1) == labels),
          np.mean(np.any(top5 == labels[:, None], 1)))


@pytest.mark.parametrize("mode", ALL_MODES)
def test_each_mode_writes_results_checkpoints_and_events(references, sources,
                                                         mode):
  workdir, results = references[mode]
  key = MAIN_RESULT[mode]
  assert results[key]["num_examples"] == 360
  # The reported accuracies are those of the final state, counted once per
  # test image: a NumPy recount from the stored checkpoint agrees (one image
  # may flip on a near tie between the sharded and the one-batch logits).
  top1, top5 = _reference_accuracy(mode, workdir, sources)
  assert abs(results[key]["top1"] - top1) <= 1 / 360 + 1e-9
  assert abs(results[key]["top5"] - top5) <= 1 / 360 + 1e-9
  assert os.path.isfile(os.path.join(workdir, f"{mode}_results.json"))
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  steps = ckpt_lib.Checkpointer(workdir, 10).all_steps()
  assert steps[-1] == STEPS and set(steps) <= {2, 4, 6}
  tags = _event_tags(workdir)
  assert {"loss", "images_per_sec", f"eval/{key}_top1"} <= tags, tags
  if mode in ("finetune", "distill"):
    assert os.path.isfile(os.path.join(workdir, "export", "meta.json"))


# Pretraining's: test_reliability.py, step by step over 20 steps.
@pytest.mark.parametrize("mode", ALL_MODES[1:])
def test_sigterm_then_resume_equals_uninterrupted(references, sources,
                                                  tmp_path, mode):
  ref_dir, ref_results = references[mode]
  workdir = str(tmp_path / mode)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.run(MODES[mode], mode_config(mode, sources), workdir,
             guard=_SignalAt(3))
  assert stopped.value.step == 3 and stopped.value.reason == "SIGTERM"
  # The step in flight was checkpointed and committed, nothing later.
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2, 3]
  assert not os.path.exists(os.path.join(workdir, f"{mode}_results.json"))
  results = loop.run(MODES[mode], mode_config(mode, sources), workdir)
  ours, theirs = _stored(workdir, STEPS), _stored(ref_dir, STEPS)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  key = MAIN_RESULT[mode]
  assert results[key]["top1"] == pytest.approx(ref_results[key]["top1"],
                                               abs=1.5 / 360)


def test_every_mode_builds_from_a_frozen_config(references):
  # pretrain's reference is the session's shared run; the slow-device test
  # (test_loop_signals.py) checks that every mode, pretrain included, gets a
  # frozen config.
  assert set(BUILT_WITH) == set(ALL_MODES[1:])
  for mode, config in BUILT_WITH.items():
    assert isinstance(config, ml_collections.FrozenConfigDict), mode


@pytest.mark.parametrize("mode,other", (("linear_eval", "pretrain"),
                                        ("finetune", "distill"),
                                        ("distill", "pretrain")))
def test_checkpoints_of_another_model_are_refused_then_moved_aside(
    references, sources, tmp_path, mode, other):
  # Another architecture's checkpoints in the workdir (a 2-layer projection
  # head against the student's 1 layer; a whole network against a head).
  workdir = str(tmp_path / mode)
  shutil.copytree(os.path.join(references[other][0],
                               ckpt_lib.CHECKPOINT_SUBDIR),
                  os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR))
  config = mode_config(mode, sources, steps=2)
  with pytest.raises(ValueError) as err:
    loop.run(MODES[mode], config, workdir)
  message = str(err.value)
  assert "does not fit the configured model" in message
  assert "train.start_over=True" in message
  assert any(kind in message for kind in ("missing", "unexpected",
                                          "shape mismatch")), message
  config.train.start_over = True
  results = loop.run(MODES[mode], config, workdir)
  assert results[MAIN_RESULT[mode]]["num_examples"] == 360
  aside = glob.glob(os.path.join(workdir, "checkpoints.replaced-*"))
  assert len(aside) == 1 and sorted(os.listdir(aside[0])) == ["2", "4", "6"]
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2]


def test_sigterm_during_the_final_evaluation_resumes_without_training(
    sources, tmp_path):
  workdir = str(tmp_path / "run")
  config = mode_config("linear_eval", sources, steps=2)

  class _SignalInEval(preemption.PreemptionGuard):
    def should_stop(self, step, sync):
      if sync and step == 2 and self.requested is None and _evaluating[0]:
        os.kill(os.getpid(), signal.SIGTERM)
      return super().should_stop(step, sync)

  _evaluating = [False]
  job_eval = loop._evaluate_final  # pylint: disable=protected-access

  def flagged(*args, **kwargs):
    _evaluating[0] = True
    return job_eval(*args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(loop, "_evaluate_final", flagged)
    with pytest.raises(preemption.Preempted) as stopped:
      loop.run(MODES["linear_eval"], config, workdir, guard=_SignalInEval())
  assert stopped.value.step == 2
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2]
  results = loop.run(MODES["linear_eval"], config, workdir)
  assert results["linear"]["num_examples"] == 360
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2]


