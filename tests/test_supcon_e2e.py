"""SupCon with 4 views through the train step, the CLI and the teacher export."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import digits_supcon
from simclr_jax import data as data_lib
from simclr_jax import losses
from simclr_jax import parallel
from simclr_jax.engine import state as state_lib
from simclr_jax.evals import classifier
from simclr_jax.evals import encoders
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import pretrain
from simclr_jax.tools import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AXIS = parallel.AXIS


def _np_supcon_out(z, labels, tau):
  """Khosla et al. 2020, eq. (2), float64: rows image-major, V views each."""
  n, views, _ = z.shape
  z = np.asarray(z, np.float64).reshape(n * views, -1)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ z.T / tau
  lab = np.repeat(labels, views)
  losses = []
  for i in range(n * views):
    others = np.arange(n * views) != i
    log_denom = np.log(np.sum(np.exp(logits[i, others])))
    pos = others & (lab == lab[i])
    if pos.any():  # an anchor without positives contributes nothing
      losses.append(-np.mean(logits[i, pos] - log_denom))
  return np.mean(losses)


def _grads_on(devices, config, variables, batch):
  mesh = parallel.make_mesh(devices)
  model = build_model(model_config(config), num_classes=10,
                      axis_name=AXIS)
  fn = functools.partial(pretrain.pretrain_grads, model=model,
                         loss_cfg=config.loss, probe=True)
  mapped = jax.jit(parallel.per_replica(
      fn, mesh, in_specs=(P(), P(), P(AXIS)), out_specs=(P(), P(), P())))
  return jax.device_get(mapped(
      parallel.replicate(mesh, variables["params"]),
      parallel.replicate(mesh, variables["batch_stats"]),
      parallel.host_to_global(mesh, batch)))


def test_four_view_supcon_step_matches_numpy_on_one_and_eight_devices():
  config = digits_supcon.get_config("tiny")
  assert config.loss.name == "supcon" and config.aug.num_views == 4
  model = build_model(model_config(config), num_classes=10)
  variables = state_lib.init_variables(model, 16, seed=0)
  rng = np.random.default_rng(1)
  # Repeated classes across devices, and class 9 a singleton (its 4 views
  # are still positives of each other; no NaN anywhere).
  labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 4, 5, 5, 0, 1, 6, 9],
                    np.int32)
  batch = {"images": rng.uniform(size=(16, 4, 16, 16, 3)).astype(np.float32),
           "labels": labels}
  g1, _, m1 = _grads_on(jax.devices()[:1], config, variables, batch)
  g8, _, m8 = _grads_on(jax.devices(), config, variables, batch)
  # Reference: training-mode BatchNorm over all 64 views on one device is
  # the global BatchNorm of the mapped step.
  flat = batch["images"].reshape((64, 16, 16, 3))
  z = model.apply(variables, flat, train=True,
                  mutable=["batch_stats"])[0]["z"]
  expected = _np_supcon_out(np.asarray(z).reshape(16, 4, -1), labels,
                            config.loss.temperature)
  np.testing.assert_allclose(m1["loss"], expected, rtol=1e-4)
  np.testing.assert_allclose(m8["loss"], expected, rtol=1e-4)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g8),
                          jax.tree.leaves(g1)):
    assert np.all(np.isfinite(a)), jax.tree_util.keystr(path)
    np.testing.assert_allclose(a, b, rtol=1e-4,
                               atol=1e-4 * max(np.abs(b).max(), 1e-12),
                               err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def supcon_run(tmp_path_factory):
  """configs/digits_supcon.py:tiny (SupCon, 4 views) via the CLI, 2 devices."""
  workdir = str(tmp_path_factory.mktemp("supcon") / "run")
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, "-m", "simclr_jax.main",
         "--config=configs/digits_supcon.py:tiny", f"--workdir={workdir}",
         "--config.train.steps=4", "--config.train.log_every_steps=1"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return workdir, proc.stdout + proc.stderr


def test_cli_pretrains_supcon_with_four_views(supcon_run):
  workdir, log = supcon_run
  with open(os.path.join(workdir, "pretrain_results.json")) as f:
    results = json.load(f)
  assert results["step"] == 4
  assert results["config"]["loss"]["name"] == "supcon"
  assert results["config"]["aug"]["num_views"] == 4
  assert results["probe"]["num_examples"] == 360
  losses = [float(part.split("=")[1]) for line in log.splitlines()
            for part in line.replace(",", " ").split()
            if part.startswith("loss=")]
  assert len(losses) == 4 and np.all(np.isfinite(losses))  # steps 1 to 4
  # Step 1's loss, recomputed independently: the initial variables (the
  # config's seed) on the first batch of the data pipeline, the SupCon loss
  # in float64 NumPy. Training-mode BatchNorm over all 128 views on one
  # device is the global BatchNorm of the 2-device run.
  config = digits_supcon.get_config("tiny")
  model = build_model(model_config(config), num_classes=10)
  variables = state_lib.init_variables(model, config.data.image_size,
                                       config.seed)
  batch = next(data_lib.make_pretrain_iterator(
      config.data, config.aug, config.train.global_batch, config.seed))
  images = np.asarray(batch["images"])
  n, views = images.shape[:2]
  assert (n, views) == (32, 4)
  z = model.apply(variables, images.reshape((n * views,) + images.shape[2:]),
                  train=True, mutable=["batch_stats"])[0]["z"]
  expected = _np_supcon_out(np.asarray(z).reshape(n, views, -1),
                            np.asarray(batch["labels"]),
                            config.loss.temperature)
  assert losses[0] == pytest.approx(expected, rel=1e-4)


def test_export_of_the_run_teaches_with_the_probe_accuracy(supcon_run,
                                                            tmp_path):
  workdir, _ = supcon_run
  config = digits_supcon.get_config("tiny")
  config.train.steps = 4
  out = str(tmp_path / "teacher")
  meta = export.export_workdir(workdir, out)
  assert meta["num_classes"] == 10 and meta["extra"]["step"] == 4
  config.distill.teacher_export = out
  teacher, variables, _ = encoders.load_teacher(config)
  mesh = parallel.make_mesh()
  acc = classifier.ClassifierEval("teacher", config, teacher, mesh).run(
      parallel.replicate(mesh, variables), 0)
  with open(os.path.join(workdir, "pretrain_results.json")) as f:
    probe = json.load(f)["probe"]
  # The same probe on the same 360 images (2 vs 8 devices): same accuracy.
  assert acc["num_examples"] == 360
  assert acc["top1"] == pytest.approx(probe["top1"], abs=1.5 / 360)
