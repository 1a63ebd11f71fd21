"""The one loop, for every mode: results, checkpoints, events, signals, resume.

Each of the four modes runs a few steps on tiny digits data through
`engine.loop.run`; a SIGTERM in the middle of each is resumed to the same
final state as an uninterrupted run; each refuses checkpoints of another
architecture unless `train.start_over` moves them aside.
"""

import dataclasses
import glob
import itertools
import os
import shutil
import signal
import threading
import time

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow as tf

import eval_helpers
from configs import digits_distill
from configs import digits_finetune
from configs import digits_linear
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import loop
from simclr_jax.engine import preemption
from simclr_jax.engine import state as state_lib
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import MODES
from simclr_jax.modes import RESULT_NAMES

STEPS = 6
ALL_MODES = ("pretrain", "linear_eval", "finetune", "distill")
# The evaluator whose result each mode is judged by.
MAIN_RESULT = {"pretrain": "probe", "linear_eval": "linear",
               "finetune": "finetune", "distill": "student"}


@pytest.fixture(scope="module")
def sources(tiny_workdir, tmp_path_factory):
  """A pretraining workdir (encoder source) and a teacher export."""
  root = tmp_path_factory.mktemp("sources")
  pre = tiny_workdir[0]
  config = digits_distill.get_config("tiny")
  model = build_model(model_config(config), num_classes=10)
  variables = state_lib.init_variables(model, 16, seed=7)
  teacher = str(root / "teacher")
  export_lib.save_export(teacher, variables, model_config(config), 10,
                       16)
  return {"pretrain": pre, "teacher": teacher}


def mode_config(mode, sources, steps=STEPS):
  """A tiny config of `mode`: a checkpoint every 2 steps, a log every step."""
  if mode == "pretrain":  # as conftest's shared `tiny_pretrain_run`
    config = eval_helpers.tiny_run_config()
  elif mode == "linear_eval":
    config = digits_linear.get_config()
    config.init.checkpoint_dir = sources["pretrain"]
    config.eval.evaluators = ("classifier", "knn")
  elif mode == "finetune":
    config = digits_finetune.get_config()
    config.init.checkpoint_dir = sources["pretrain"]
  else:
    config = digits_distill.get_config("tiny")
    config.distill.teacher_export = sources["teacher"]
  config.train.global_batch = 32
  config.eval.batch_size = 64
  config.train.steps = steps
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  return config


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


@pytest.mark.parametrize("mode", ALL_MODES)
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


class _SlowDevice(loop.Mode):
  """`mode` with a device slower than the host: each step's state also goes
  through a chain of matmuls (value unchanged), and a watcher thread sends
  this process a real SIGTERM once `signal_at` steps have finished on the
  device. The batches are made before the first step, so the host is never
  the slow side. (A host callback cannot make the delay: it makes dispatch
  synchronous on the CPU backend.)"""

  MATMULS, SIZE = 30, 640  # about 0.3 s per step on a 2-core CPU

  def __init__(self, mode, signal_at):
    self.name, self._mode, self._at = mode.name, mode, signal_at
    # The wrapped mode's rules, data needs and evaluators.
    for attr in ("needs_labels", "needs_eval_split", "evaluators",
                 "default_evaluators", "rules", "validate", "check_data"):
      setattr(self, attr, getattr(mode, attr))
    self.outputs = []  # (step, metrics) in dispatch order
    self.running_at_signal = None

  def _watch(self):
    deadline = time.time() + 600
    while len(self.outputs) < self._at and time.time() < deadline:
      time.sleep(0.001)
    jax.block_until_ready(self.outputs[self._at - 1][1])
    self.running_at_signal = self._at + 1
    os.kill(os.getpid(), signal.SIGTERM)

  def build(self, config, mesh, workdir):
    self.config = config  # what the loop hands every mode: frozen
    job = self._mode.build(config, mesh, workdir)

    @jax.jit
    def held(state):
      leaves, tree = jax.tree.flatten(state)
      y = jnp.full((self.SIZE, self.SIZE), 1e-3) + jnp.sum(
          leaves[0]).astype(jnp.float32) * 1e-9
      y = jax.lax.fori_loop(0, self.MATMULS, lambda i, y: jnp.tanh(y @ y), y)
      # 0 * y: XLA keeps float products with 0 (NaN semantics), so the leaf
      # waits for the chain.
      leaves[0] = leaves[0] + (0 * y[0, 0]).astype(leaves[0].dtype)
      return jax.tree.unflatten(tree, leaves)

    def step_fn(state, *args):
      state, metrics = job.step_fn(state, *args)
      state = held(state)
      if not self.outputs:
        jax.block_until_ready(state)  # the compile; then watch the steps
        threading.Thread(target=self._watch, daemon=True).start()
      self.outputs.append((len(self.outputs) + 1, metrics))
      return state, metrics

    def batches(start):
      # Made before the first step, so the host is never the slow side.
      return iter(list(itertools.islice(job.batches(start),
                                        job.total_steps - start)))

    return dataclasses.replace(job, step_fn=step_fn, batches=batches)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_a_stop_signal_is_acted_on_within_three_steps_of_a_slow_device(
    sources, tmp_path, mode):
  # One log step and one checkpoint at the end of 60 steps: without a bound
  # the host would queue all 60 before it looks at the signal again.
  config = mode_config(mode, sources, steps=60)
  config.train.log_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  slow = _SlowDevice(MODES[mode], signal_at=3)
  workdir = str(tmp_path / mode)
  with pytest.raises(preemption.Preempted) as stopped:
    loop.run(slow, config, workdir)
  running = slow.running_at_signal
  assert running is not None and running >= 4
  assert running <= stopped.value.step <= running + 3, (running,
                                                        stopped.value.step)
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [stopped.value.step]
  assert isinstance(slow.config, ml_collections.FrozenConfigDict)


def test_every_mode_builds_from_a_frozen_config(references):
  # pretrain's reference is the session's shared run; the slow-device test
  # above checks that every mode, pretrain included, gets a frozen config.
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
  assert "unexpected" in message or "shape mismatch" in message
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


def _cli_args(mode, sources, workdir, steps):
  config = {"linear_eval": "configs/digits_linear.py",
            "finetune": "configs/digits_finetune.py",
            "distill": "configs/digits_distill.py:tiny"}[mode]
  args = ["-m", "simclr_jax.main", f"--config={config}",
          f"--workdir={workdir}", f"--config.train.steps={steps}",
          "--config.train.checkpoint_every_steps=1",
          "--config.train.log_every_steps=1",
          "--config.train.global_batch=32", "--config.eval.batch_size=64"]
  if mode == "distill":
    args.append(f"--config.distill.teacher_export={sources['teacher']}")
  else:
    args.append(f"--config.init.checkpoint_dir={sources['pretrain']}")
  if mode == "linear_eval":
    args.append("--config.eval.evaluators=('classifier',)")
  return args


@pytest.mark.parametrize("mode", ("linear_eval", "finetune", "distill"))
def test_cli_sigterm_exits_75_and_kill9_resumes(sources, tmp_path, mode):
  # pylint: disable=g-import-not-at-top
  import time
  import test_preemption_cli as cli
  workdir = str(tmp_path / "run")
  procs = []
  try:
    # 1. SIGTERM once a few checkpoints exist: save that step, exit 75.
    log1 = str(tmp_path / "run1.log")
    procs.append(cli._spawn(_cli_args(mode, sources, workdir, 500), log1))
    cli._wait_for(procs[-1], log1, "Saving checkpoint at step 3",
                  time.time() + cli.DEADLINE_S)
    procs[-1].send_signal(signal.SIGTERM)
    rc = procs[-1].wait(timeout=120)
    text = open(log1).read()
    assert rc == preemption.PREEMPTED_EXIT_CODE, text[-4000:]
    stopped = int(text.split("preempted (SIGTERM) at step ")[1].split(";")[0])
    assert ckpt_lib.Checkpointer(workdir, 3).latest_step() == stopped
    # 2. Resume, then kill -9 once it has saved again.
    log2 = str(tmp_path / "run2.log")
    procs.append(cli._spawn(_cli_args(mode, sources, workdir, 500), log2))
    cli._wait_for(procs[-1], log2,
                  f"Resuming from checkpoint at step {stopped}",
                  time.time() + cli.DEADLINE_S)
    # A save starts only once the previous one is committed: when step
    # stopped + 3 begins saving, step stopped + 1 is on disk for sure.
    cli._wait_for(procs[-1], log2, f"Saving checkpoint at step {stopped + 3}",
                  time.time() + cli.DEADLINE_S)
    procs[-1].send_signal(signal.SIGKILL)
    procs[-1].wait(timeout=60)
    latest = ckpt_lib.Checkpointer(workdir, 3).latest_step()
    assert latest > stopped
    # 3. The rerun resumes from the newest complete checkpoint and finishes.
    log3 = str(tmp_path / "run3.log")
    procs.append(cli._spawn(_cli_args(mode, sources, workdir, latest + 2) +
                            ["--config.train.allow_config_change=True"], log3))
    rc = procs[-1].wait(timeout=cli.DEADLINE_S)
    text = open(log3).read()
    assert rc == 0, text[-4000:]
    assert f"Resuming from checkpoint at step {latest}" in text
    assert ckpt_lib.Checkpointer(workdir, 3).latest_step() == latest + 2
    assert os.path.isfile(os.path.join(workdir, f"{mode}_results.json"))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("overrides,field", [
    # The embedding map of a small eval split: 360 points, perplexity 500.
    (["--config.eval.evaluators=('classifier','knn','pictures')",
      "--config.viz.tsne_perplexity=500"],
     "viz.tsne_perplexity=500.0"),
    (["--config.eval.knn_k=5000"], "eval.knn_k=5000"),
    (["--config.train.global_batch=2048"], "train.global_batch=2048"),
    (["--config.loss.temperature=nan"], "loss.temperature=nan"),
    (["--config.eval.batch_size=0"], "eval.batch_size=0"),
])
def test_config_errors_are_one_line_with_status_2_before_compiling(
    tmp_path, overrides, field):
  # pylint: disable=g-import-not-at-top
  import subprocess
  import sys
  import test_preemption_cli as cli
  cmd = [sys.executable, "-m", "simclr_jax.main",
         "--config=configs/digits.py:tiny",
         f"--workdir={tmp_path / 'run'}", *overrides]
  proc = subprocess.run(cmd, cwd=cli.REPO, env=cli._env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert errors == [f"error: config.{field} is invalid: " +
                    errors[0].split(" is invalid: ")[1]], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert "Initial compilation" not in proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
