"""Distillation: the loss, the step on 1 and 8 devices, the loop, bad input."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_distill
from simclr_jax import data as data_lib
from simclr_jax import modes
from simclr_jax import optim
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import encoders
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import distill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _np_distill(student, teacher, tau):
  """SimCLR v2 eq. (2) in float64: -mean_i sum_y P_T log P_S at temperature."""
  s = np.asarray(student, np.float64) / tau
  t = np.asarray(teacher, np.float64) / tau
  p_t = np.exp(t - t.max(1, keepdims=True))
  p_t /= p_t.sum(1, keepdims=True)
  log_p_s = s - s.max(1, keepdims=True)
  log_p_s -= np.log(np.exp(log_p_s).sum(1, keepdims=True))
  return -np.mean(np.sum(p_t * log_p_s, 1))


def _np_ce(logits, labels):
  x = np.asarray(logits, np.float64)
  x = x - x.max(1, keepdims=True)
  log_p = x - np.log(np.exp(x).sum(1, keepdims=True))
  return -np.mean(log_p[np.arange(len(labels)), labels])


def _config(teacher_export, arg="tiny"):
  config = digits_distill.get_config(arg)
  config.model.stem = "cifar"
  config.distill.teacher_export = str(teacher_export)
  return config


@pytest.fixture(scope="module")
def teacher_export(tmp_path_factory):
  """A randomly initialised tiny teacher with a 10-class head, exported."""
  config = digits_distill.get_config("tiny")
  config.model.head_layers = 2  # a different architecture from the student
  model_cfg = model_config(config)
  model = build_model(model_cfg, num_classes=10)
  variables = state_lib.init_variables(model, 16, seed=7)
  path = str(tmp_path_factory.mktemp("teacher") / "export")
  export_lib.save_export(path, variables, model_cfg, 10, 16)
  return path


@pytest.mark.quick
@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
def test_distill_loss_matches_numpy_and_its_gradient(tau):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(6, 10)) * 3
  t = rng.normal(size=(6, 10)) * 3
  loss, grad = jax.value_and_grad(distill.distill_loss)(
      jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), tau)
  np.testing.assert_allclose(loss, _np_distill(s, t, tau), rtol=1e-5)
  # d/ds of the soft cross-entropy: (softmax(s/tau) - softmax(t/tau)) / (tau b).
  def softmax(x):
    e = np.exp(x / tau - (x / tau).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
  np.testing.assert_allclose(grad, (softmax(s) - softmax(t)) / (tau * 6),
                             rtol=1e-4, atol=1e-7)
  # No gradient flows into the teacher's logits.
  t_grad = jax.grad(distill.distill_loss, argnums=1)(
      jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), tau)
  assert not np.any(np.asarray(t_grad))


def _step_on(devices, config, teacher, teacher_vars, variables, batch):
  mesh = parallel.make_mesh(devices)
  student = build_model(model_config(config), num_classes=10,
                        axis_name=parallel.AXIS, sup_stop_gradient=False)
  schedule = optim.make_schedule(0.1, total_steps=10, warmup_steps=0)
  tx = optim.make_optimizer(config.optim, schedule)
  state = parallel.replicate(mesh, state_lib.TrainState(
      step=np.zeros((), np.int32), params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"])))
  step = distill.make_distill_step(student, teacher, tx, config.distill,
                                   schedule, mesh)
  state, metrics = step(state, parallel.replicate(mesh, teacher_vars),
                        parallel.host_to_global(mesh, batch))
  return jax.device_get(state), jax.device_get(metrics)


def test_step_one_vs_eight_devices_and_numpy_loss(teacher_export):
  config = _config(teacher_export)
  config.distill.temperature = 2.0
  config.distill.label_weight = 0.5
  teacher, teacher_vars, _ = encoders.load_teacher(config)
  student = build_model(model_config(config), num_classes=10,
                        sup_stop_gradient=False)
  variables = state_lib.init_variables(student, 16, seed=0)
  rng = np.random.default_rng(0)
  batch = {"images": rng.uniform(size=(16, 16, 16, 3)).astype(np.float32),
           "labels": rng.integers(0, 10, size=16).astype(np.int32)}
  s1, m1 = _step_on(jax.devices()[:1], config, teacher, teacher_vars,
                    variables, batch)
  s8, m8 = _step_on(jax.devices(), config, teacher, teacher_vars, variables,
                    batch)
  # Reference: one device without collectives; training-mode BatchNorm over
  # the whole batch is the global BatchNorm of the mapped step.
  s_logits = student.apply(variables, batch["images"], train=True,
                           mutable=["batch_stats"])[0]["logits"]
  t_logits = teacher.apply(teacher_vars, batch["images"], train=False)["logits"]
  soft = _np_distill(s_logits, t_logits, 2.0)
  hard = _np_ce(s_logits, batch["labels"])
  for m in (m1, m8):
    np.testing.assert_allclose(m["distill_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(m["label_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], soft + 0.5 * hard, rtol=1e-5)
  for a, b in zip(jax.tree.leaves((s8.params, s8.batch_stats)),
                  jax.tree.leaves((s1.params, s1.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5,
                               atol=1e-5 * max(np.abs(b).max(), 1e-12))
  moved = [np.abs(a - b).max() for a, b in zip(
      jax.tree.leaves(s1.params["sup_head"]),
      jax.tree.leaves(variables["params"]["sup_head"]))]
  assert max(moved) > 0  # the student's classifier is trained, not frozen


def _eval_reference(config, model, variables):
  """Top-1 of `model` on the eval split: one device, plain NumPy counting."""
  correct = total = 0
  for batch in data_lib.make_eval_iterator(
      config.data, config.aug, config.data.eval_split, 64, 0, 1):
    logits = model.apply(variables, batch["images"], train=False)["logits"]
    hits = np.argmax(np.asarray(logits), -1) == batch["labels"]
    correct += int(np.sum(hits & batch["mask"]))
    total += int(np.sum(batch["mask"]))
  return correct / total, total


def _run_main(workdir, *overrides):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "simclr_jax.main",
         "--config=configs/digits_distill.py:tiny", f"--workdir={workdir}",
         *overrides]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def test_run_evaluates_exports_and_resumes(teacher_export, tmp_path):
  workdir = str(tmp_path / "distill")
  config = _config(teacher_export)
  config.train.steps = 4
  results = distill.run(config, workdir)
  ckpt = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt) if d.isdigit()) == [2, 4]
  assert results["step"] == 4
  assert results["student"]["num_examples"] == 360  # every test digit, once
  teacher, teacher_vars, _ = encoders.load_teacher(config)
  top1, count = _eval_reference(config, teacher, teacher_vars)
  assert count == 360
  assert results["teacher"]["top1"] == pytest.approx(top1, abs=1e-9)
  # The student export reloads as a classifier with the same accuracy.
  exported, meta = export_lib.load_export(os.path.join(workdir, "export"))
  assert meta["num_classes"] == 10 and meta["extra"]["step"] == 4
  student = build_model(meta["model"], num_classes=10)
  top1, _ = _eval_reference(config, student, exported)
  assert results["student"]["top1"] == pytest.approx(top1, abs=1e-9)

  # Extending the run is a decision: the changed step count is allowed.
  proc = _run_main(workdir, "--config.train.steps=6",
                   "--config.train.allow_config_change=True",
                   f"--config.distill.teacher_export={teacher_export}",
                   "--config.model.stem=cifar")
  assert "Resuming from checkpoint at step 4" in proc.stdout + proc.stderr
  assert "student top-1 accuracy on test" in proc.stdout
  with open(os.path.join(workdir, "distill_results.json")) as f:
    assert json.load(f)["step"] == 6


@pytest.mark.quick
@pytest.mark.parametrize("field,value,match", [
    ("teacher_export", "", "distill.teacher_export"),
    ("temperature", 0.0, "distill.temperature"),
    ("label_weight", -1.0, "distill.label_weight"),
])
def test_validate_rejects_bad_fields(field, value, match):
  config = _config("unused")
  config.distill[field] = value
  with pytest.raises(ValueError, match=match):
    modes.validate(config)


def test_load_teacher_rejects_bad_exports(teacher_export, tmp_path):
  with pytest.raises(ValueError, match="no such directory"):
    encoders.load_teacher(_config(tmp_path / "missing"))
  config = _config(teacher_export)
  config.data.image_size = 32
  with pytest.raises(ValueError, match="data.image_size"):
    encoders.load_teacher(config)
  # An encoder-only export (no classifier head) cannot teach.
  variables, meta = export_lib.load_export(teacher_export)
  variables["params"].pop("sup_head")
  headless = str(tmp_path / "headless")
  export_lib.save_export(headless, variables, meta["model"], 0, 16)
  with pytest.raises(ValueError, match="no classifier head"):
    encoders.load_teacher(_config(headless))
  # An export whose variables do not match its own meta.json.
  wrong = str(tmp_path / "wrong")
  export_lib.save_export(wrong, variables, meta["model"], 10, 16)
  with pytest.raises(ValueError, match="sup_head"):
    encoders.load_teacher(_config(wrong))


@pytest.mark.quick
@pytest.mark.parametrize("module,arg", [
    ("digits_distill", ""), ("digits_distill", "small"),
    ("digits_distill", "tiny"), ("cifar10_distill", None),
    ("digits_supcon", ""), ("digits_supcon", "tiny"),
    ("cifar10_supcon", None)])
def test_configs_validate(module, arg):
  import importlib  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(f"configs.{module}")
  config = mod.get_config() if arg is None else mod.get_config(arg)
  modes.validate(config, num_devices=8)
  if "supcon" in module:
    assert config.loss.name == "supcon" and config.mode == "pretrain"
  else:
    assert config.mode == "distill" and config.distill.label_weight == 0.0
