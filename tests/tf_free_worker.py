"""Pretrain, resume, export, embed, linear eval without TensorFlow, TFDS, clu.

Run as `python tests/tf_free_worker.py OUT_DIR` (by `test_tf_free.py` and by
`launch/gpu_check.sh`): it blocks the three packages before anything else is
imported (`tf_blocker`), then runs the steps of `STEPS` in order on the
synthetic source with a tiny model, on whatever devices JAX finds (the
8 forced CPU devices of the tests, or a GPU). Each step reads what earlier
ones left in `ctx` and adds to it; a new step is one function and one line
in `STEPS`. The report, `OUT_DIR/report.json`, lists the steps that passed,
the devices, and the blocked packages that were imported anyway (none).
"""

import glob
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tf_blocker  # pylint: disable=g-import-not-at-top,wrong-import-position

tf_blocker.install()

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/
import simclr_jax
from configs import synthetic as synthetic_config
from simclr_jax.evals import encoders
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model
from simclr_jax.models import model_config
from simclr_jax.modes import MODES
from simclr_jax.tools import export
# pylint: enable=g-import-not-at-top,wrong-import-position

# Compile time dominates a tiny model (as in tests/conftest.py).
jax.config.update("jax_disable_most_optimizations", True)

TRAIN_STEPS = 4  # a checkpoint every 2 steps (configs/synthetic.py:tiny)


def _config():
  config = synthetic_config.get_config("tiny")
  assert config.train.steps == TRAIN_STEPS
  return config


def _leaves_equal(a, b, what: str) -> None:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 0, (what, len(la), len(lb))
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


def step_pretrain(ctx) -> None:
  """A few pretraining steps on synthetic data; probe and kNN evaluated."""
  ctx["workdir"] = os.path.join(ctx["out"], "run")
  results = MODES["pretrain"].run(_config(), ctx["workdir"])
  assert results["data_source"] == "synthetic", results.get("data_source")
  assert results["step"] == TRAIN_STEPS
  for name in ("probe", "knn"):
    assert 0.0 <= results[name]["top1"] <= 1.0, (name, results[name])
  # 24 eval examples in batches of 16: the padded rows are not counted.
  assert results["probe"]["num_examples"] == 24, results["probe"]
  with open(os.path.join(ctx["workdir"], "pretrain_results.json")) as f:
    assert json.load(f)["data_source"] == "synthetic"
  # Without clu the metrics still reach a TensorBoard event file.
  events = glob.glob(os.path.join(ctx["workdir"], "events.out.tfevents.*"))
  assert events and any(b"loss" in open(e, "rb").read() for e in events)
  ctx["results"] = results


def step_resume(ctx) -> None:
  """Restores the step-2 checkpoint and trains on: equal to the unbroken run.

  The unbroken run's step-4 checkpoint is read, then removed, so that the
  rerun of the same command resumes at step 2; the state after step 2 and
  the synthetic batches of steps 3 and 4 must come back exactly.
  """
  unbroken, _, _, step = encoders.load_checkpoint(ctx["workdir"])
  assert step == TRAIN_STEPS, step
  shutil.rmtree(os.path.join(ctx["workdir"], "checkpoints",
                             str(TRAIN_STEPS)))
  MODES["pretrain"].run(_config(), ctx["workdir"])
  resumed, _, _, step = encoders.load_checkpoint(ctx["workdir"])
  assert step == TRAIN_STEPS, step
  starts = sorted(os.listdir(os.path.join(ctx["workdir"], "config_history")))
  assert [n.split("_")[1] for n in starts] == ["step0", "step2"], starts
  _leaves_equal(resumed, unbroken, "resumed vs unbroken run")
  ctx["variables"] = resumed


def step_export(ctx) -> None:
  """Exports the checkpoint; the export's encoder gives the same features."""
  ctx["export"] = os.path.join(ctx["out"], "export")
  meta = export.export_workdir(ctx["workdir"], ctx["export"])
  assert meta["extra"]["step"] == TRAIN_STEPS, meta
  variables, meta = export_lib.load_export(ctx["export"])
  _leaves_equal(variables, ctx["variables"], "export vs checkpoint")
  model = build_model(meta["model"], num_classes=0)
  config = _config()
  size = config.data.image_size
  x = np.random.default_rng(0).uniform(size=(4, size, size, 3)).astype(
      np.float32)
  live = build_model(model_config(config), num_classes=0)
  want = live.apply(ctx["variables"], x, train=False)["h"]
  got = model.apply(variables, x, train=False)["h"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6,
                             atol=1e-6)
  assert np.all(np.isfinite(np.asarray(got)))


def step_embed(ctx) -> None:
  """The encoder API embeds an array: the export's encoder on [0, 1] input."""
  encoder = simclr_jax.load_encoder(ctx["export"])
  size = _config().data.image_size
  images = np.random.default_rng(1).integers(0, 256, (5, size, size, 3),
                                             dtype=np.uint8)
  got = encoder.embed(images)
  # At the export's own size with the full-image crop the preprocessing is
  # only the scaling to [0, 1].
  model = build_model(export_lib.load_export(ctx["export"])[1]["model"],
                      num_classes=0)
  want = model.apply(ctx["variables"], images.astype(np.float32) / 255.0,
                     train=False)["h"]
  assert got.shape == want.shape, (got.shape, want.shape)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def step_linear_eval(ctx) -> None:
  """Linear evaluation (linear head, fast probe, kNN) of the checkpoint."""
  config = _config()
  config.mode = "linear_eval"
  config.init.checkpoint_dir = ctx["workdir"]
  config.eval.evaluators = ("classifier", "fast_probe", "knn")
  config.optim.name = "sgd"
  config.optim.weight_decay = 0.0
  config.train.steps = 2
  results = MODES["linear_eval"].run(config, os.path.join(ctx["out"],
                                                          "linear"))
  assert results["data_source"] == "synthetic"
  for name in ("linear", "linear_probe", "knn"):
    assert 0.0 <= results[name]["top1"] <= 1.0, (name, results)
  assert results["linear"]["num_examples"] == 24, results["linear"]


# (name, function): run in this order; later steps read what earlier ones
# put in ctx ('workdir', 'results', 'variables', 'export').
STEPS = [("pretrain", step_pretrain), ("resume", step_resume),
         ("export", step_export), ("embed", step_embed),
         ("linear_eval", step_linear_eval)]


def main(out: str) -> int:
  """Runs every step; writes `out/report.json`; returns the exit status."""
  os.makedirs(out, exist_ok=True)
  report = {"devices": [str(d) for d in jax.devices()],
            "platform": jax.devices()[0].platform, "jax": jax.__version__,
            "passed": [], "seconds": {}}
  ctx = {"out": out}
  status = 0
  try:
    for name, fn in STEPS:
      t0 = time.time()
      fn(ctx)
      report["seconds"][name] = round(time.time() - t0, 1)
      report["passed"].append(name)
      print(f"tf-free step {name}: ok ({report['seconds'][name]} s)",
            flush=True)
  except Exception as e:  # pylint: disable=broad-except
    report["error"] = f"{type(e).__name__}: {e}"
    status = 1
    raise
  finally:
    report["blocked_loaded"] = tf_blocker.loaded()
    with open(os.path.join(out, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1]))
