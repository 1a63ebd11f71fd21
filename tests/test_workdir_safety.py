"""Nothing already written is lost: exports, the workdir lock, corrupt
checkpoints, failures after the last step, config changes on resume, operator
errors and temporary files.
"""

import errno
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from PIL import Image

import eval_helpers
import test_preemption_cli as cli
from configs import digits
from simclr_jax import config as config_lib
from simclr_jax.engine import checkpoint as ckpt_lib
from simclr_jax.engine import logs
from simclr_jax.engine import workdir as workdir_lib
from simclr_jax.engine import writer as writer_lib
from simclr_jax.evals import knn
from simclr_jax.exports import format as export_lib
from simclr_jax.modes import pretrain
from simclr_jax.tools import export

STEPS = 6


def _config(steps=STEPS):
  return eval_helpers.tiny_run_config(steps)


def _tree(directory):
  """{relative path: bytes} of every file below `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


@pytest.fixture()
def reference(tiny_pretrain_run):
  """A finished 6-step run of `_config()` with checkpoints 2, 4 and 6."""
  return tiny_pretrain_run


# ------------------------------------------------------------- exports ---


def test_export_never_replaces_a_workdir_or_a_users_folder(reference,
                                                           tmp_path):
  workdir, _ = reference
  before = _tree(workdir)
  with pytest.raises(config_lib.ConfigError, match="not an export made by"):
    export.export_workdir(workdir, workdir)
  assert _tree(workdir) == before
  user = tmp_path / "mine"
  user.mkdir()
  (user / "notes.txt").write_text("my notes")
  with pytest.raises(config_lib.ConfigError, match="notes.txt"):
    export.export_workdir(workdir, str(user))
  assert _tree(user) == {"notes.txt": b"my notes"}


def test_an_existing_export_is_replaced_and_siblings_are_kept(reference,
                                                              tmp_path):
  workdir, _ = reference
  out = str(tmp_path / "export")
  for sibling in (".old", ".tmp"):  # a user's folders named like old temps
    os.makedirs(out + sibling)
    with open(os.path.join(out + sibling, "keep.txt"), "w") as f:
      f.write("mine")
  assert export.export_workdir(workdir, out, step=2)["extra"]["step"] == 2
  assert export.export_workdir(workdir, out, step=6)["extra"]["step"] == 6
  assert export_lib.read_export_meta(out)["extra"]["step"] == 6
  assert sorted(os.listdir(out)) == ["meta.json", "variables"]
  for sibling in (".old", ".tmp"):
    assert _tree(out + sibling) == {"keep.txt": b"mine"}
  # No work folder of ours is left beside it.
  assert sorted(os.listdir(tmp_path)) == ["export", "export.old",
                                          "export.tmp"]


def _meta(out):
  with open(os.path.join(out, "meta.json")) as f:
    return json.load(f)


def test_an_export_lists_what_it_wrote(reference, tmp_path):
  workdir, _ = reference
  out = str(tmp_path / "export")
  export.export_workdir(workdir, out, step=2)
  listed = _meta(out)["files"]
  found = sorted(p + ("/" if os.path.isdir(os.path.join(out, p)) else "")
                 for p in (os.path.relpath(os.path.join(r, n), out)
                           for r, ds, fs in os.walk(out) for n in ds + fs))
  assert sorted(listed + ["meta.json"]) == found
  assert "variables/manifest.ocdbt" in listed


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "older"])
def test_a_users_file_inside_an_export_is_never_deleted(reference, tmp_path,
                                                        listed):
  workdir, _ = reference
  out = str(tmp_path / "export")
  export.export_workdir(workdir, out, step=2)
  if not listed:  # as exports were written before they listed their files
    meta = _meta(out)
    del meta["files"]
    with open(os.path.join(out, "meta.json"), "w") as f:
      json.dump(meta, f)
    assert export.export_workdir(workdir, out, step=4)["extra"]["step"] == 4
    with open(os.path.join(out, "meta.json"), "w") as f:
      json.dump(meta, f)
  for mine, named in (("variables/d/notes.txt", "'variables/d/notes.txt'"),
                      ("variables/mine/", "'variables/mine/'"),
                      ("extra/a/b.txt", "'extra/' and 2 more")):
    path = os.path.join(out, mine)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not mine.endswith("/"):
      with open(path, "w") as f:
        f.write("mine")
    before = _tree(out)
    with pytest.raises(config_lib.ConfigError) as err:
      export.export_workdir(workdir, out, step=6)
    message = str(err.value)
    assert "\n" not in message
    assert f"also holds {named}, which the export did not write" in message
    assert "nothing was written or deleted" in message
    assert _tree(out) == before and os.path.exists(path)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    if mine.endswith("/"):
      os.rmdir(path)
    else:
      os.remove(path)
      if mine.startswith("extra"):
        shutil.rmtree(os.path.join(out, "extra"))
  # Clean again: replaced, and nothing of ours is left beside it.
  assert export.export_workdir(workdir, out, step=6)["extra"]["step"] == 6
  assert sorted(os.listdir(tmp_path)) == ["export"]


def test_convert_refuses_an_export_holding_a_users_file(reference, tmp_path):
  from simclr_jax.tools import convert  # pylint: disable=g-import-not-at-top
  workdir, _ = reference
  out = str(tmp_path / "export")
  export.export_workdir(workdir, out, step=2)
  os.makedirs(os.path.join(out, "variables", "mine"))
  with open(os.path.join(out, "variables", "mine", "x.txt"), "w") as f:
    f.write("mine")
  before = _tree(out)
  with pytest.raises(config_lib.ConfigError, match="also holds "
                     "'variables/mine/'"):  # before the checkpoint is read
    convert.convert_to_export(str(tmp_path / "no_checkpoint"), out)
  assert _tree(out) == before


def test_convert_refuses_a_workdir_as_out(reference):
  workdir, _ = reference
  before = _tree(workdir)
  fixture = os.path.join(cli.REPO, "..", "shared", "fixtures",
                         "official_simclr_tf2", "r18_1x_sk0", "ckpt")
  proc = subprocess.run(
      [sys.executable, "-m", "simclr_jax.convert",
       f"--tf2_checkpoint={fixture}", f"--out={workdir}"],
      cwd=cli.REPO, env=cli._env(), capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f"error: --out='{workdir}' is invalid" in proc.stderr
  assert _tree(workdir) == before


# ---------------------------------------------------------------- lock ---


def test_second_run_on_a_workdir_is_refused_and_a_killed_holder_frees_it(
    tmp_path):
  workdir = str(tmp_path / "run")
  # Long enough that the holder is still training when it is killed; no
  # checkpoint of its own to resume (this test is about the lock).
  args = ["-m", "simclr_jax.main", "--config=configs/digits.py:tiny",
          f"--workdir={workdir}", "--config.train.steps=2000",
          "--config.train.checkpoint_every_steps=100000",
          "--config.train.log_every_steps=1"]
  procs = []
  try:
    log1 = str(tmp_path / "first.log")
    procs.append(cli._spawn(args, log1))
    cli._wait_for(procs[0], log1, "Initial compilation",
                  time.time() + cli.DEADLINE_S)
    t0 = time.time()
    second = subprocess.run([sys.executable, *args], cwd=cli.REPO,
                            env=cli._env(), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "is in use by process" in second.stderr
    assert f"process {procs[0].pid} " in second.stderr
    assert time.time() - t0 < 60
    assert procs[0].poll() is None  # refused while the holder trains
    # A holder killed with -9 leaves no lock behind: a shorter run of the
    # same workdir takes it and finishes.
    procs[0].kill()
    procs[0].wait(timeout=60)
    rerun = subprocess.run(
        [sys.executable, *args[:4], "--config.train.steps=2",
         "--config.train.allow_config_change=True"], cwd=cli.REPO,
        env=cli._env(), capture_output=True, text=True,
        timeout=cli.DEADLINE_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is in use" not in rerun.stderr
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------- corruption ---


def _remove_manifest(step_dir):
  os.remove(os.path.join(step_dir, "default", "manifest.ocdbt"))


def _garbage_metadata(step_dir):
  with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
    f.write("{ not json")


def _truncate_data(step_dir):
  for path in glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0",
                                     "d", "*")):
    with open(path, "r+b") as f:
      f.truncate(10)


def _remove_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "default"))


@pytest.mark.parametrize("corrupt", [_remove_manifest, _garbage_metadata,
                                     _truncate_data, _remove_item])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_an_older_resumed(
    reference, tmp_path, corrupt):
  ref_dir, ref_results = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  os.remove(os.path.join(workdir, workdir_lib.LOCK_FILE))
  corrupt(os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR, str(STEPS)))
  results = pretrain.run(_config(), workdir)
  # Resumed from step 4 (not 0) and retrained steps 5-6 to the same result.
  assert results["knn"]["top1"] == pytest.approx(ref_results["knn"]["top1"],
                                                 abs=1.5 / 360)
  aside = os.listdir(os.path.join(workdir, ckpt_lib.UNREADABLE_SUBDIR))
  assert len(aside) == 1 and aside[0].startswith(f"{STEPS}-")
  steps = ckpt_lib.Checkpointer(workdir, 10).all_steps()
  assert steps == [2, 4, 6]
  history = sorted(os.listdir(os.path.join(workdir, workdir_lib.HISTORY_DIR)))
  assert history[-1].startswith("start_step4_")


def test_all_checkpoints_unreadable_stops_until_start_over(reference,
                                                           tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  os.remove(os.path.join(workdir, workdir_lib.LOCK_FILE))
  ckpt_dir = os.path.join(workdir, ckpt_lib.CHECKPOINT_SUBDIR)
  for step in os.listdir(ckpt_dir):
    _garbage_metadata(os.path.join(ckpt_dir, step))
  with pytest.raises(ckpt_lib.NoReadableCheckpoint) as refused:
    pretrain.run(_config(), workdir)
  message = str(refused.value)
  aside = os.path.join(workdir, ckpt_lib.UNREADABLE_SUBDIR)
  assert "\n" not in message and aside in message
  assert "train.start_over=True" in message
  assert sorted(int(n.split("-")[0]) for n in os.listdir(aside)) == [2, 4, 6]
  # A rerun refuses again: nothing was trained, nothing was written.
  with pytest.raises(ckpt_lib.NoReadableCheckpoint):
    pretrain.run(_config(), workdir)
  assert not os.listdir(ckpt_dir)
  # start_over trains from step 0 and keeps the unreadable ones.
  config = _config()
  config.train.start_over = True
  pretrain.run(config, workdir)
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2, 4, 6]
  history = sorted(os.listdir(os.path.join(workdir, workdir_lib.HISTORY_DIR)))
  assert history[-1].startswith("start_step0_")
  kept = [n for n in os.listdir(workdir)
          if n.startswith(ckpt_lib.UNREADABLE_SUBDIR + "-")]
  assert len(kept) == 1 and len(os.listdir(os.path.join(workdir, kept[0]))) == 3


# ------------------------------------------------- after the last step ---


def test_a_failure_in_the_final_evaluation_keeps_the_last_checkpoint(
    tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  config = _config(steps=3)
  config.train.checkpoint_every_steps = 1000  # only the last step's save

  def planted(*args, **kwargs):
    raise RuntimeError("planted failure in the final evaluation")

  with monkeypatch.context() as mp:
    mp.setattr(knn.KnnEval, "run", planted)
    with pytest.raises(RuntimeError, match="planted"):
      pretrain.run(config, workdir)
  # The final save was committed and is readable.
  ckpt = ckpt_lib.Checkpointer(workdir, 10)
  assert ckpt.all_steps() == [3]
  assert ckpt.item_shapes(3)
  ckpt.close()
  recorder = eval_helpers.Recorder()
  monkeypatch.setattr(writer_lib, "Writer", lambda _: recorder)
  results = pretrain.run(config, workdir)
  assert results["knn"]["num_examples"] == 360
  # No training step ran again: the only scalars are the evaluations'.
  assert all(k.startswith("eval/") for s in recorder.scalars.values()
             for k in s), recorder.scalars


# ------------------------------------------------------ before training ---


def _folder_with_corrupt_eval_image(root):
  rng = np.random.default_rng(0)
  for split, count in (("train", 24), ("test", 6)):
    for name in ("ant", "bee"):
      folder = os.path.join(root, split, name)
      os.makedirs(folder)
      for k in range(count):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                        ).save(os.path.join(folder, f"{k}.png"))
  bad = os.path.join(root, "test", "bee", "broken.png")
  with open(bad, "wb") as f:
    f.write(b"not an image" * 8)
  return bad


def test_a_corrupt_eval_image_fails_before_the_first_step(tmp_path):
  bad = _folder_with_corrupt_eval_image(str(tmp_path / "images"))
  config = _config(steps=2)
  config.data.source = "folder"
  config.data.data_dir = str(tmp_path / "images")
  config.eval.knn_k = 5
  config.eval.batch_size = 8
  config.train.global_batch = 16
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match="cannot be decoded") as err:
    pretrain.run(config, workdir)
  assert bad in str(err.value)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  config.data.skip_corrupt = True  # skipped and counted instead
  results = pretrain.run(config, workdir)
  assert results["knn"]["num_examples"] == 12


@pytest.mark.quick
@pytest.mark.parametrize("field,value", [
    ("optim.base_lr", float("nan")), ("loss.temperature", float("inf")),
    ("optim.weight_decay", float("-inf")), ("eval.batch_size", 0)])
def test_non_finite_numbers_and_empty_eval_batches_fail_validation(field,
                                                                   value):
  config = _config()
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(config_lib.ConfigError, match=f"config.{field}="):
    config_lib.validate(config)


# --------------------------------------------------- resume with changes ---


def test_a_changed_config_on_resume_is_stopped_unless_allowed(reference,
                                                              tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / "run")
  shutil.copytree(ref_dir, workdir)
  config = _config(steps=STEPS + 2)
  made_with = config.optim.base_lr  # the reference run's
  config.optim.base_lr = 2.0
  with pytest.raises(config_lib.ConfigError) as err:
    pretrain.run(config, workdir)
  message = str(err.value)
  assert f"optim.base_lr: {made_with} -> 2.0" in message
  assert "train.steps: 6 -> 8" in message
  assert "allow_config_change" in message
  assert ckpt_lib.Checkpointer(workdir, 10).all_steps() == [2, 4, 6]
  config.train.allow_config_change = True
  pretrain.run(config, workdir)
  assert ckpt_lib.Checkpointer(workdir, 10).latest_step() == STEPS + 2
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["optim"]["base_lr"] == made_with  # how 2-6 were made
  history = sorted(os.listdir(os.path.join(workdir, workdir_lib.HISTORY_DIR)))
  assert [h.split("_")[1] for h in history] == ["step0", f"step{STEPS}"]


# ---------------------------------------------------------- the operator ---


@pytest.mark.quick
def test_operator_errors_are_one_line():
  full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/ckpt")
  wrapped = ValueError("RESOURCE_EXHAUSTED: Error writing ...")
  wrapped.__cause__ = full
  assert logs.operator_error(wrapped) == (
      "no space left on the device: /runs/x/ckpt")
  text = ValueError("Failed to write 264484 bytes to file 6: No space left "
                    "on device [os_error_code='28']")
  assert logs.operator_error(text).startswith("no space left on the device (")
  assert logs.operator_error(PermissionError(
      errno.EACCES, "Permission denied", "/runs/y")) == (
          "permission denied: /runs/y")
  assert logs.operator_error(OSError(errno.EROFS, "x", "/ro")) == (
      "read-only file system: /ro")
  assert logs.operator_error(RuntimeError("something else")) is None


@pytest.mark.quick
def test_dead_runs_temp_folders_are_removed_at_the_next_start(tmp_path,
                                                              monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = tmp_path / f"{workdir_lib.TEMP_PREFIX}{dead.pid}"
  stale.mkdir()
  (stale / "__autograph_generated_file1.py").write_text("x = 1")
  live = tmp_path / f"{workdir_lib.TEMP_PREFIX}1"  # init: always alive
  live.mkdir()
  path = workdir_lib.private_temp_dir()
  assert not stale.exists() and live.exists()
  assert path == str(tmp_path / f"{workdir_lib.TEMP_PREFIX}{os.getpid()}")
  assert tempfile.gettempdir() == path


@pytest.mark.quick
def test_fields_added_since_a_workdir_was_made_are_not_changes():
  from configs import digits  # pylint: disable=g-import-not-at-top
  from simclr_jax.engine import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = digits.get_config("tiny")
  stored = config.to_dict()
  del stored["eval"]["evaluators"]  # as written before the field existed
  assert workdir_lib.changed_fields(stored, config) == []
  config.loss.temperature = 0.3  # a real change still counts
  assert workdir_lib.changed_fields(stored, config) == [
      "loss.temperature: 0.2 -> 0.3"]


@pytest.mark.quick
def test_a_leftover_work_folder_is_cleared_only_if_all_ours(tmp_path):
  variables = {"params": {"w": np.ones((2, 3), np.float32)},
               "batch_stats": {"m": np.zeros(3, np.float32)}}
  out = str(tmp_path / "export")
  save = lambda: export_lib.save_export(out, variables, {"depth": 18}, 0, 16)
  save()
  # An interrupted replacement left the old export aside, and an
  # interrupted export left its work folder (orbax's own work folder in it).
  old = str(tmp_path / ".export.simclr_jax-replaced")
  shutil.copytree(out, old)
  partial = str(tmp_path / ".export.simclr_jax-partial")
  shutil.copytree(os.path.join(out, "variables"),
                  os.path.join(partial, "variables.orbax-checkpoint-tmp-17"))
  open(os.path.join(partial, ".simclr_jax_partial"), "w").close()
  save()  # both cleared: all ours
  assert sorted(os.listdir(tmp_path)) == ["export"]
  for leftover in (old, partial):
    shutil.copytree(out, leftover)
    if leftover == partial:
      open(os.path.join(partial, ".simclr_jax_partial"), "w").close()
    with open(os.path.join(leftover, "variables", "mine.txt"), "w") as f:
      f.write("mine")
    before = _tree(leftover)
    with pytest.raises(config_lib.ConfigError,
                       match="holds 'variables/mine.txt', which simclr_jax "
                       "did not write; nothing was deleted"):
      save()
    assert _tree(leftover) == before
    shutil.rmtree(leftover)
  assert export_lib.is_export(out) and not export_lib.is_export(old)


def test_a_file_put_inside_while_exporting_is_kept_aside(tmp_path,
                                                         monkeypatch):
  variables = {"params": {"w": np.ones((2, 3), np.float32)},
               "batch_stats": {"m": np.zeros(3, np.float32)}}
  out = str(tmp_path / "export")
  export_lib.save_export(out, variables, {"depth": 18}, 0, 16)
  checked = export_lib.check_export_target

  def check_then_user_writes(path, field):
    checked(path, field)  # passes; then the user puts a file inside
    with open(os.path.join(path, "variables", "late.txt"), "w") as f:
      f.write("mine")

  monkeypatch.setattr(export_lib, "check_export_target",
                      check_then_user_writes)
  export_lib.save_export(out, variables, {"depth": 18}, 0, 32)
  assert export_lib.read_export_meta(out)["image_size"] == 32
  assert export_lib.is_export(out)
  kept = [n for n in os.listdir(tmp_path) if n.startswith("export.kept-")]
  assert len(kept) == 1 and len(os.listdir(tmp_path)) == 2
  assert _tree(str(tmp_path / kept[0])) == {"variables/late.txt": b"mine"}
