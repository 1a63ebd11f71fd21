"""Pretraining runs the kNN monitor every eval period and the fast probe at the end."""

import glob
import json
import os

import tensorflow as tf

import eval_helpers
from simclr_jax.modes import pretrain


def _scalar_tags(workdir):
  tags = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.setdefault(value.tag, set()).add(event.step)
  return tags


def test_pretraining_logs_knn_and_probe_and_writes_config(tmp_path):
  config = eval_helpers.tiny_config()
  config.train.steps = 4
  config.train.eval_every_steps = 2
  config.train.checkpoint_every_steps = 4
  config.eval.evaluators = ("classifier", "knn", "fast_probe")  # + the probe
  config.eval.probe_max_iters = 20
  workdir = str(tmp_path / "run")
  results = pretrain.run(config, workdir)
  assert results["knn"]["num_examples"] == 360
  assert results["knn"]["memory_size"] == 1437
  assert results["linear_probe"]["num_examples"] == 360
  assert results["probe"]["num_examples"] == 360
  tags = _scalar_tags(workdir)
  # kNN at the eval period (step 2) and at the end; online probe likewise.
  assert tags["eval/knn_top1"] == {2, 4}
  assert tags["eval/probe_top1"] == {2, 4}
  assert tags["eval/linear_probe_top1"] == {4}
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["steps"] == 4
