"""Export -> load -> features round trip, the evaluate CLI, and shape errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import eval_helpers
from configs import digits_linear
from simclr_jax import data as data_lib
from simclr_jax import parallel
from simclr_jax.evals import encoders
from simclr_jax.evals import features
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.tools import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def exported(tiny_workdir, tiny_export):
  """(config, host state, export path, meta) of the shared tiny workdir."""
  _, host = tiny_workdir
  out, meta = tiny_export
  return eval_helpers.tiny_config(), host, out, meta


@pytest.mark.quick
def test_export_holds_every_variable_and_the_image_convention(exported):
  config, host, out, meta = exported
  variables, meta = export_lib.load_export(out)
  assert meta["image_size"] == 16 and meta["image_range"] == [0.0, 1.0]
  assert meta["extra"]["step"] == 4 and meta["num_classes"] == 10
  assert meta["model"] == model_config(config) | {
      "stage_sizes": [1, 1], "base_widths": [8, 16]}
  want = jax.tree_util.tree_leaves_with_path(
      {"params": host.params, "batch_stats": host.batch_stats})
  got = jax.tree_util.tree_leaves(variables)
  assert len(want) == len(got)
  for (path, a), b in zip(want, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.mark.quick
def test_features_from_export_equal_the_live_model(exported):
  config, host, out, _ = exported
  # Live model: the pretraining state applied directly, on one device, to
  # all 360 test images in a single unpadded batch.
  live = build_model(model_config(config), num_classes=10)
  batch = next(data_lib.make_eval_iterator(config.data, config.aug, "test",
                                           360))
  want = jax.jit(lambda v, x: live.apply(v, x, train=False)["h"])(
      {"params": host.params, "batch_stats": host.batch_stats},
      batch["images"])
  # Export: loaded from disk, 8 devices, padded batches of 64, reordered.
  config.init.export = out
  variables, model_cfg, source = encoders.load_encoder(config)
  assert source["kind"] == "export"
  model = build_model(model_cfg, num_classes=0)
  mesh = parallel.make_mesh()
  got, labels = features.extract(features.encoder_feature_fn(model),
                                 parallel.replicate(mesh, variables), config,
                                 "test", mesh)
  assert got.shape == (360, 16)
  np.testing.assert_array_equal(labels, batch["labels"])
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.quick
def test_export_of_wrong_shape_names_the_parameters(exported, tmp_path):
  _, _, out, _ = exported
  bad = str(tmp_path / "bad")
  variables, meta = export_lib.load_export(out)
  model_cfg = dict(meta["model"], base_widths=[8, 8])
  export_lib.save_export(bad, variables, model_cfg, 10, 16)
  config = eval_helpers.tiny_config()
  config.init.export = bad
  with pytest.raises(ValueError, match=r"shape mismatch at params/encoder/"):
    encoders.load_encoder(config)


@pytest.mark.quick
def test_missing_workdir_config_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    export.export_workdir(str(tmp_path), str(tmp_path / "out"))


def test_evaluate_cli_on_export_writes_results(exported, tmp_path):
  _, _, out, _ = exported
  workdir = str(tmp_path / "eval")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  cmd = [sys.executable, "-m", "simclr_jax.evaluate", f"--export={out}",
         "--config=configs/digits_linear.py", f"--workdir={workdir}",
         "--config.train.steps=2", "--config.train.global_batch=32",
         "--config.eval.label_fraction=0.1", "--config.eval.probe_max_iters=20",
         "--config.eval.probe_l2_grid=(0.01,)"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert "linear eval top-1 accuracy on test" in proc.stdout
  with open(os.path.join(workdir, "linear_eval_results.json")) as f:
    results = json.load(f)
  for key in ("linear", "linear_probe", "knn"):
    assert results[key]["num_examples"] == 360, key
  # 10% of each class of the 1,437 training digits, rounded per class.
  labels = data_lib.load_labels(eval_helpers.tiny_config().data, "train")
  want = sum(max(1, round(0.1 * c)) for c in np.bincount(labels))
  assert results["knn"]["memory_size"] == want
  assert results["linear_probe"]["num_train"] == want
  assert results["linear"]["num_train"] == want
  assert results["source"]["kind"] == "export" and results["step"] == 4
  assert digits_linear.get_config().mode == results["config"]["mode"]
