"""Makes `tensorflow`, `tensorflow_datasets` and `clu` unimportable.

Installed first thing in a fresh interpreter (the TensorFlow-free worker, the
device check's test stage), it stands in for a machine where these packages
are not installed: any import of them, direct or from a library, raises
`ModuleNotFoundError`, and `importlib.util.find_spec` answers None, as there.
"""

import importlib.abc
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "clu")


class _Hiding(importlib.abc.MetaPathFinder):
  """Wraps a finder so that it does not find the blocked packages.

  Wrapping every finder (instead of one that raises) keeps probes such as
  `importlib.util.find_spec('tensorflow')` answering None, as they do where
  the package is not installed.
  """

  def __init__(self, finder):
    self._finder = finder

  def find_spec(self, name, path=None, target=None):
    """None for a blocked package; the wrapped finder's answer otherwise."""
    if name.split(".")[0] in BLOCKED:
      return None
    find = getattr(self._finder, "find_spec", None)
    return None if find is None else find(name, path, target)

  def __getattr__(self, attr):
    return getattr(self._finder, attr)


def install() -> None:
  """Blocks the packages for the rest of this interpreter (idempotent)."""
  if loaded():
    raise RuntimeError(f"already imported, cannot be blocked: {loaded()}")
  sys.meta_path[:] = [f if isinstance(f, _Hiding) else _Hiding(f)
                      for f in sys.meta_path]


def loaded() -> list:
  """Blocked packages that are imported anyway (should be [])."""
  return sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
