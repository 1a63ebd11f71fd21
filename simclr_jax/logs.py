"""Console logging: keep the run's own lines readable.

orbax logs every step of every asynchronous save at INFO level (dozens of
lines per checkpoint); those lines are dropped below WARNING so the training
metrics stay visible. Warnings and errors from every library still show.
"""

import logging

# Source-path fragments of libraries whose INFO lines are dropped.
_QUIET_SOURCES = ("/orbax/", "/etils/", "/tensorstore/")


class _DropLibraryInfo(logging.Filter):
  """Drops records below WARNING that come from the listed libraries."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(s in path for s in _QUIET_SOURCES)


def quiet_libraries() -> None:
  """Installs the filter on the root and absl loggers' handlers (idempotent)."""
  loggers = [logging.getLogger(), logging.getLogger("absl")]
  for logger in loggers:
    handlers = logger.handlers or []
    for handler in handlers:
      if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
        handler.addFilter(_DropLibraryInfo())
