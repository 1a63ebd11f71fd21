"""Linear eval leaves the encoder bit-identical; fine-tuning trains every layer."""

import os
import shutil

import jax
import numpy as np
import pytest

from configs import digits_finetune
from configs import digits_linear
from simclr_jax.evals import encoders
from simclr_jax.modes import finetune
from simclr_jax.modes import linear_eval
from simclr_jax import parallel
from simclr_jax.engine import checkpoint as ckpt_lib

@pytest.fixture()
def workdir(tiny_workdir):
  return tiny_workdir[0]


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _train_head(config, workdir):
  """Builds the linear_eval job and runs its steps by hand: final variables."""
  mesh = parallel.make_mesh()
  job = linear_eval.MODE.build(config, mesh, workdir)
  state, batches = job.state, job.batches(0)
  for _ in range(job.total_steps):
    batch = parallel.host_to_global(mesh, next(batches))
    state, _ = job.step_fn(state, *job.step_args, batch)
  return parallel.to_host(job.variables(state)), job


@pytest.mark.quick
def test_linear_eval_leaves_encoder_params_and_bn_stats_bit_identical(
    workdir, tmp_path):
  config = digits_linear.get_config()
  config.init.checkpoint_dir = workdir
  config.train.steps = 3
  config.train.global_batch = 32
  config.eval.batch_size = 64
  config.eval.evaluators = ("classifier",)
  config.optim.base_lr = 4.0  # large steps: the head must visibly move
  variables, _, source = encoders.load_encoder(config)
  assert source == {"kind": "checkpoint", "step": 4, "path": workdir}
  before = _leaves(variables)
  final, job = _train_head(config, str(tmp_path / "lin"))
  after = _leaves(final)
  # Every stored variable (encoder, projection head, old probe's BN...) and
  # every BatchNorm statistic is exactly as loaded.
  kept = {k: v for k, v in after.items() if "sup_head" not in k}
  assert set(kept) == {k for k in before if "sup_head" not in k}
  for key, value in kept.items():
    assert value.dtype == before[key].dtype
    assert np.array_equal(value, before[key]), key
  assert any("batch_stats" in k and "encoder" in k for k in kept)
  # Only the new, zero-initialised head trained; the checkpointed state is
  # the head alone, so the encoder cannot come back from a checkpoint either.
  head = final["params"]["sup_head"]["dense"]
  assert head["kernel"].shape == (16, 10)  # the second stage's 16 channels
  assert np.abs(head["kernel"]).max() > 0
  assert set(job.state.params) == {"dense"} and job.state.batch_stats == {}
  results = linear_eval.run(config, str(tmp_path / "lin"))
  assert results["linear"]["num_examples"] == 360
  assert results["linear"]["steps"] == 3


def test_linear_eval_resumes_from_its_head_checkpoint(workdir, tmp_path):
  config = digits_linear.get_config()
  config.init.checkpoint_dir = workdir
  config.train.global_batch = 32
  config.eval.batch_size = 64
  config.eval.evaluators = ("classifier",)
  config.train.steps = 4
  config.train.checkpoint_every_steps = 2
  lin = str(tmp_path / "lin")
  first = linear_eval.run(config, lin)
  job = linear_eval.MODE.build(config, parallel.make_mesh(), lin)

  def head_at(step):
    ckpt = ckpt_lib.Checkpointer(lin, 3)
    head = parallel.to_host(ckpt.restore(step, job.state).params)
    ckpt.close()
    return head["dense"]["kernel"]

  kernel = head_at(4)
  # Lose the last checkpoint: the rerun resumes at step 2 and must replay
  # steps 3 and 4 exactly (same batches, same schedule).
  shutil.rmtree(os.path.join(lin, "checkpoints", "4"))
  second = linear_eval.run(config, lin)
  np.testing.assert_allclose(head_at(4), kernel, rtol=1e-6, atol=1e-9)
  assert second["linear"]["top1"] == first["linear"]["top1"]


def test_finetune_trains_all_layers_from_head_layer_one(workdir, tmp_path):
  config = digits_finetune.get_config()
  config.init.checkpoint_dir = workdir
  config.train.steps = 2
  config.train.global_batch = 32
  config.eval.batch_size = 64
  config.optim.base_lr = 0.5
  results = finetune.run(config, str(tmp_path / "ft"))
  assert results["finetune"]["num_examples"] == 360
  assert results["finetune"]["head_from"] == 1
  config.init.checkpoint_dir = ""
  config.init.export = str(tmp_path / "ft" / "export")
  tuned, model_cfg, _ = encoders.load_encoder(config)
  assert model_cfg["sup_head_from"] == 1
  config.init.export = ""
  config.init.checkpoint_dir = workdir
  start, _, _ = encoders.load_encoder(config)
  # The classifier reads head layer 1 (width 64); encoder and that layer moved.
  assert tuned["params"]["sup_head"]["dense"]["kernel"].shape == (16, 10)
  for part in ("encoder", "head"):
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(),
                         tuned["params"][part], start["params"][part])
    assert max(jax.tree.leaves(moved)) > 0, part


def test_finetune_rejects_a_head_layer_the_encoder_lacks(workdir, tmp_path):
  config = digits_finetune.get_config()
  config.init.checkpoint_dir = workdir
  config.finetune.head_from = 3  # the tiny model has a 2-layer head
  with pytest.raises(ValueError, match="finetune.head_from=3"):
    finetune.run(config, str(tmp_path / "ft"))
