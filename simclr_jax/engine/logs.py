"""Console logging: keep the run's own lines readable.

orbax logs every step of every asynchronous save at INFO level (dozens of
lines per checkpoint); those lines are dropped below WARNING so the training
metrics stay visible. Warnings and errors from every library still show.
"""

import contextlib
import errno
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from typing import Any, Callable, Iterator, List, Optional

# Source-path fragments of libraries whose INFO lines are dropped.
_QUIET_SOURCES = ("/orbax/", "/etils/", "/tensorstore/", "/jax/_src/xla_bridge",
                  "/tensorflow/", "/tensorflow_datasets/", "/clu/")
# Exit status of a configuration error (as for a command-line usage error).
USAGE_EXIT_CODE = 2


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING that come from the listed libraries."""

  def filter(self, record: logging.LogRecord) -> bool:
    path = record.pathname.replace("\\", "/")
    ours = not any(s in path for s in _QUIET_SOURCES)
    if record.levelno >= logging.WARNING:
      if not ours:
        # A library's background thread repeating an error the main thread
        # reports too: its message, without pages of traceback.
        record.exc_info, record.exc_text, record.stack_info = None, None, None
      return True
    return ours


def _is_closed_loop_noise(exc: BaseException) -> bool:
  # tensorstore callbacks reaching orbax's asyncio loop after a failed save
  # has closed it; the failure itself is reported by the main thread.
  return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


def _quiet_hooks() -> None:
  """Hooks that drop the closed-event-loop echoes of a failed async save."""
  default_unraisable, default_thread = sys.unraisablehook, threading.excepthook
  if getattr(default_unraisable, "simclr_jax", False):
    return

  def unraisable(args):
    if not _is_closed_loop_noise(args.exc_value):
      default_unraisable(args)

  def thread_hook(args):
    if not _is_closed_loop_noise(args.exc_value):
      default_thread(args)

  unraisable.simclr_jax = True
  sys.unraisablehook, threading.excepthook = unraisable, thread_hook


def quiet_libraries() -> None:
  """Installs the filter on the root and absl loggers' handlers (idempotent)."""
  _quiet_hooks()
  # Deprecation notices of TensorFlow/TFDS/orbax are for their own developers.
  warnings.filterwarnings("ignore", category=DeprecationWarning)
  warnings.filterwarnings("ignore", category=FutureWarning)
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  for logger in loggers:
    handlers = logger.handlers or []
    for handler in handlers:
      if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())


def quiet_native_logs() -> None:
  """Silences TensorFlow's and XLA's C++ INFO lines (call before importing jax).

  Entry points call it first thing; the native libraries read the setting
  once, when they load.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Lines TensorFlow's native code prints to the process's stderr on import,
# before any logging is set up (TF_CPP_MIN_LOG_LEVEL does not reach them).
_NATIVE_CHATTER = ("All log messages before absl::InitializeLog",
                   "oneDNN custom operations are on",
                   "This TensorFlow binary is optimized",
                   "To enable the following instructions",
                   "Unable to register cu", "computation placer already")


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
  """Drops TensorFlow's native start-up lines written to fd 2 meanwhile.

  Everything else written to the process's stderr in the block is passed on
  unchanged when the block ends.
  """
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, ValueError, io.UnsupportedOperation):
    yield  # no real stderr (an embedding host): nothing to filter
    return
  sys.stderr.flush()
  saved = os.dup(fd)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), fd)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, fd)
      os.close(saved)
      tmp.seek(0)
      kept = [l for l in tmp.read().decode(errors="replace").splitlines(True)
              if not any(s in l for s in _NATIVE_CHATTER)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


# Operator failures reported as one line: errno -> what the operator sees.
_OS_ERRORS = {errno.ENOSPC: "no space left on the device",
              errno.EDQUOT: "disk quota exceeded",
              errno.EROFS: "read-only file system",
              errno.EACCES: "permission denied",
              errno.EPERM: "operation not permitted"}
# The same failures as libraries word them when they wrap the OSError.
_OS_ERROR_TEXTS = (("No space left on device", errno.ENOSPC),
                   ("Disk quota exceeded", errno.EDQUOT),
                   ("Read-only file system", errno.EROFS),
                   ("Permission denied", errno.EACCES))


def operator_error(exc: BaseException) -> Optional[str]:
  """One line for a full disk, a read-only or forbidden path; else None.

  Follows the exception's causes, since orbax and TensorFlow wrap the
  original OSError in their own exceptions.
  """
  seen, e = set(), exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _OS_ERRORS:
      where = f": {e.filename}" if e.filename else ""
      return f"{_OS_ERRORS[e.errno]}{where}"
    for text, code in _OS_ERROR_TEXTS:
      if text in str(e):
        return f"{_OS_ERRORS[code]} ({' '.join(str(e).split())[:200]})"
    e = e.__cause__ or e.__context__
  return None


def _exit_now(status: int) -> None:
  """Exits at once, skipping the teardown of background writer threads.

  After a failed write their teardown only repeats the failure as pages of
  tracebacks; what was committed is already on disk.
  """
  sys.stdout.flush()
  sys.stderr.flush()
  logging.shutdown()
  if tempfile.tempdir and os.path.basename(tempfile.tempdir).startswith(
      "simclr_jax-run-"):
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)
  os._exit(status)  # pylint: disable=protected-access


def run_app(main: Callable[[List[str]], Any]) -> None:
  """Runs an absl `main` as a command: quiet libraries, one-line errors.

  Every command (training and the tools) goes through here, so library
  chatter is filtered the same way everywhere; a bad value ends the process
  with status 2 and one line naming the field, before anything is written
  or compiled (flags and config overrides included, `engine.cli_errors`);
  a locked
  workdir, a full disk or a read-only or forbidden path with status 1 and
  one line. Each process gets its own temp folder (see
  `engine.workdir.private_temp_dir`).

  Args:
    main: the absl main function, called with the remaining argv.
  """
  quiet_native_logs()
  from absl import app  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib
  from simclr_jax.engine import cli_errors
  from simclr_jax.engine import workdir as workdir_lib
  # pylint: enable=g-import-not-at-top

  def usage_error(e: Exception) -> None:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_CODE)

  def parse(argv):
    try:
      return cli_errors.parse(argv)
    except config_lib.ConfigError as e:
      usage_error(e)

  def wrapped(argv):
    quiet_libraries()
    workdir_lib.private_temp_dir()
    try:
      return main(argv)
    except (config_lib.ConfigError, app.UsageError) as e:
      usage_error(e)
    except workdir_lib.WorkdirLocked as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(1)
    except KeyboardInterrupt:
      # Ctrl-C outside a training loop's guard (start-up, a tool's work):
      # nothing of ours is half-written, every output is written atomically.
      print("error: interrupted (SIGINT); outputs and checkpoints written "
            "before it are intact", file=sys.stderr, flush=True)
      _exit_now(128 + signal.SIGINT)
    except Exception as e:  # pylint: disable=broad-except
      cause = operator_error(e)
      if cause is None:
        raise
      print(f"error: {cause}; checkpoints committed before it are intact",
            file=sys.stderr, flush=True)
      _exit_now(1)

  app.run(wrapped, flags_parser=parse)
