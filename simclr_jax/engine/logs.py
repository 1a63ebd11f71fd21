"""Console logging: keep the run's own lines readable.

orbax logs every step of every asynchronous save at INFO level (dozens of
lines per checkpoint); those lines are dropped below WARNING so the training
metrics stay visible. Warnings and errors from every library still show.
"""

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Any, Callable, Iterator, List

# Source-path fragments of libraries whose INFO lines are dropped.
_QUIET_SOURCES = ("/orbax/", "/etils/", "/tensorstore/", "/jax/_src/xla_bridge",
                  "/tensorflow/", "/tensorflow_datasets/", "/clu/")
# Exit status of a configuration error (as for a command-line usage error).
USAGE_EXIT_CODE = 2


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING that come from the listed libraries."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(s in path for s in _QUIET_SOURCES)


def quiet_libraries() -> None:
  """Installs the filter on the root and absl loggers' handlers (idempotent)."""
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


def run_app(main: Callable[[List[str]], Any]) -> None:
  """Runs an absl `main` as a command: quiet libraries, one-line config errors.

  Every command (training and the tools) goes through here, so library
  chatter is filtered the same way everywhere and a bad value ends the process
  with status 2 and one line naming the field, before any compile.

  Args:
    main: the absl main function, called with the remaining argv.
  """
  quiet_native_logs()
  from absl import app  # pylint: disable=g-import-not-at-top
  from simclr_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  def wrapped(argv):
    quiet_libraries()
    try:
      return main(argv)
    except config_lib.ConfigError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      sys.exit(USAGE_EXIT_CODE)

  app.run(wrapped)
