"""What a run owns in its workdir: the lock, the config history, a temp folder.

* One run per workdir: an exclusive `fcntl` lock on `<workdir>/.lock`, held
  for the life of the process (the kernel drops it when the process dies, so
  a killed run never leaves a stale lock). A second run is refused at once,
  naming the holder. In a multi-host run process 0 holds it.
* A changed config on resume is a decision: the fields that differ from the
  config the checkpoints were made with are listed and the run stops, unless
  `train.allow_config_change`; every start is recorded in
  `<workdir>/config_history/`, and `config.json` keeps the first config.
* TensorFlow writes autograph sources into the system temp folder; each run
  gets its own temp folder there, removed at exit, and folders of runs that
  died are removed at the next start.
"""

import atexit
import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Dict, List, Optional

import jax
from absl import logging
import ml_collections

from simclr_jax import config as config_lib

LOCK_FILE = ".lock"
HISTORY_DIR = "config_history"
TEMP_PREFIX = "simclr_jax-run-"
# Fields that change how a run is watched or where it runs, not what its
# checkpoints mean: they may differ on resume without a decision.
FREE_ON_RESUME = ("train.log_every_steps", "train.checkpoint_every_steps",
                  "train.max_steps_in_flight", "train.first_eta_steps",
                  "train.first_eta_seconds", "train.cpu_eta_warning_hours",
                  "train.cpu_variant",
                  "train.keep_checkpoints", "train.eval_every_steps",
                  "train.start_over", "train.allow_config_change",
                  "data.data_dir", "data.cache", "data.shuffle_buffer",
                  "eval.", "viz.", "distributed.",
                  # Replaced by eval.evaluators; old workdirs still resume.
                  "distill.eval_teacher")


class WorkdirLocked(RuntimeError):
  """Another live process runs in this workdir."""


class WorkdirLock:
  """The exclusive lock of a local workdir (a no-op for object stores)."""

  def __init__(self, workdir: str):
    """Prepares the lock of `workdir`; `acquire` takes it."""
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None
    self._enabled = "://" not in workdir and jax.process_index() == 0

  def acquire(self) -> "WorkdirLock":
    """Takes the lock or raises WorkdirLocked naming the holder."""
    if not self._enabled:
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        f.close()
        raise
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise WorkdirLocked(
          f"workdir {os.path.dirname(self.path)!r} is in use by {holder}; "
          "wait for that run to end or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    """Drops the lock (also dropped by the kernel when the process ends)."""
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _flat(tree: Any, prefix: str = "") -> Dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def changed_fields(stored: Dict[str, Any],
                   config: ml_collections.ConfigDict) -> List[str]:
  """Fields (other than `FREE_ON_RESUME`) whose values differ from `stored`.

  A field absent from `stored` was added to simclr_jax after the workdir was
  made; new fields default to the earlier behaviour, so they are logged, not
  counted as changes.

  Args:
    stored: the config a workdir's checkpoints were made with (JSON).
    config: the configuration of this start.

  Returns:
    'field: old -> new' descriptions, sorted.
  """
  old = _flat(stored)
  new = _flat(json.loads(json.dumps(config.to_dict(), default=str)))
  out = []
  added = sorted(set(new) - set(old))
  if added and old:
    logging.info("Fields added since this workdir was made (not compared): "
                 "%s", ", ".join(added))
  for key in sorted(set(old) | set(new)):
    if any(key == f or (f.endswith(".") and key.startswith(f))
           for f in FREE_ON_RESUME) or key in added:
      continue
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      out.append(f"{key}: {old.get(key, '<absent>')!r} -> "
                 f"{new.get(key, '<absent>')!r}")
  return out


def check_resume_config(workdir: str, config: ml_collections.ConfigDict,
                        stored: Optional[Dict[str, Any]]) -> None:
  """Stops a resume whose hyper-parameters differ, unless allowed.

  Args:
    workdir: the run directory (for the message).
    config: this start's configuration.
    stored: `<workdir>/config.json`, or None for a fresh workdir.

  Raises:
    ConfigError: listing the changed fields.
  """
  if stored is None:
    return
  changed = changed_fields(stored, config)
  if changed and config.train.get("allow_config_change", False):
    logging.warning("train.allow_config_change: resuming %s with changed "
                    "fields: %s", workdir, "; ".join(changed))
  elif changed:
    shown = "; ".join(changed[:10]) + (f"; and {len(changed) - 10} more"
                                       if len(changed) > 10 else "")
    raise config_lib.ConfigError(
        f"config.train.allow_config_change=False is invalid here: workdir "
        f"{workdir!r} holds checkpoints made with another config ({shown}); "
        "rerun with the same config, use another --workdir, or set "
        "config.train.allow_config_change=True to resume with these values")


def record_start(workdir: str, config: ml_collections.ConfigDict,
                 step: int) -> str:
  """Writes this start's config to `<workdir>/config_history/` (process 0).

  Returns:
    The path written.
  """
  from simclr_jax.engine import results  # pylint: disable=g-import-not-at-top
  name = f"start_step{step}_{time.strftime('%Y%m%d-%H%M%S')}"
  return results.write_results(os.path.join(workdir, HISTORY_DIR), name,
                               config.to_dict())


def private_temp_dir() -> str:
  """A temp folder for this process, removed at exit; dead runs' are removed.

  Sets `tempfile.tempdir`, so libraries that write temporary files through
  `tempfile` (TensorFlow's autograph) write them here.

  Returns:
    The folder.
  """
  base = tempfile.gettempdir()
  for path in glob.glob(os.path.join(base, TEMP_PREFIX + "*")):
    pid = path.rsplit("-", 1)[-1]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(path, ignore_errors=True)
  path = os.path.join(base, f"{TEMP_PREFIX}{os.getpid()}")
  os.makedirs(path, exist_ok=True)
  tempfile.tempdir = path
  atexit.register(shutil.rmtree, path, True)
  return path


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
