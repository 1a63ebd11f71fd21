"""Output files of the commands: replace only our own, write atomically.

An existing output file is replaced only when it is a complete file of the
kind the command writes (each command says how to recognise one); anything
else (an empty file, a truncated one, another format, a folder, a link) is
refused with one line before any work, and again just before the swap.
A file is written to a hidden temporary file beside it, flushed to disk and
renamed over the old one, so a crash never leaves it half written.
"""

import os
import tempfile
from typing import BinaryIO, Callable, Optional

from simclr_jax import config as config_lib


def check_replaceable(field: str, path: str, what: str,
                      problem: Callable[[str], Optional[str]]) -> None:
  """Refuses an existing `path` that is not a complete file of ours.

  Args:
    field: the flag that named it ('--out').
    path: the output file.
    what: the kind of file, for the message ('an embeddings file').
    problem: given a regular file, why it is not one of ours (None: it is).

  Raises:
    ConfigError: `--out='PATH' is invalid: it exists and is not <what>
      written by simclr_jax (<why>); ...`, one line.
  """
  if not os.path.lexists(path):
    return
  if os.path.islink(path):
    why = "it is a link"
  elif os.path.isdir(path):
    why = "it is a folder"
  elif not os.path.isfile(path):
    why = "it is not a regular file"
  else:
    try:
      why = problem(path)
    except OSError as e:
      why = f"cannot be read: {e.strerror or e}"
  if why:
    config_lib.fail(field, path, f"it exists and is not {what} written by "
                    f"simclr_jax ({why}); nothing was replaced. Choose "
                    "another path or remove it")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_atomic(path: str, write: Callable[[BinaryIO], None],
                 check: Optional[Callable[[], None]] = None) -> None:
  """Writes `path` through a hidden temporary file beside it, then renames.

  Args:
    path: the file to create or replace.
    write: writes the content to the open binary file it is given.
    check: called after the content is on disk and before the rename (e.g.
      `check_replaceable` again: the path may have changed meanwhile); if it
      raises, `path` is left as it is.
  """
  directory, base = os.path.split(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial",
                             dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # as a plain open() would have made it
    if check is not None:
      check()
    os.replace(tmp, path)
  finally:
    if os.path.lexists(tmp):
      os.remove(tmp)
