"""Which files under an export folder are the export's, at any depth.

An export lists every file and folder it wrote (paths relative to the
export, '/'-separated, folders ending in '/') under "files" in its
meta.json. Replacing an export removes exactly those entries; anything else
found inside, at any depth (a user's notes in `variables/`, a link), makes
the replacement refuse before any work, naming the first such entry.

Exports written before the list was recorded are recognised by their
layout: meta.json and the orbax files of `variables/`, nothing else.
"""

import json
import os
import re
from typing import Any, Dict, List, Optional

from absl import logging

from simclr_jax import config as config_lib

EXPORT_FORMAT = "simclr_jax.export/1"
FILES_KEY = "files"  # the list in meta.json of what the export wrote
META = "meta.json"

# The orbax StandardCheckpointer layout of `variables/` (OCDBT, one
# `ocdbt.process_<i>` per writing process), for exports without a list.
_DIR = re.compile(r"variables(/(d|descriptor|array_metadatas|"
                  r"ocdbt\.process_\d+(/d)?))?/")
_FILE = re.compile(
    r"variables/(_CHECKPOINT_METADATA|_METADATA|_ROOT_METADATA|_sharding|"
    r"manifest\.ocdbt|commit_success\.txt|descriptor/descriptor\.pbtxt|"
    r"array_metadatas/process_\d+|d/[0-9a-f]+|"
    r"ocdbt\.process_\d+/(manifest\.ocdbt|d/[0-9a-f]+))")
# Orbax's own work folder while `variables/` is being written.
_ORBAX_TMP = re.compile(r"variables\.orbax-checkpoint-tmp[-0-9]*/")


def _raise(error: OSError) -> None:
  raise error


def list_entries(root: str) -> List[str]:
  """Every file and folder below `root` at any depth, sorted.

  Args:
    root: a folder.

  Returns:
    Relative '/'-separated paths; folders end in '/'. A link (to a file or
    a folder) is an entry of its own and is never followed.

  Raises:
    OSError: a folder below `root` cannot be listed (then it is unknown
      what it holds, so nothing may be deleted).
  """
  out = []
  for here, dirs, files in os.walk(root, onerror=_raise):
    rel = os.path.relpath(here, root)
    prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
    for name in list(dirs):
      if os.path.islink(os.path.join(here, name)):
        dirs.remove(name)
        out.append(prefix + name)
      else:
        out.append(prefix + name + "/")
    out += [prefix + name for name in files]
  return sorted(out)


def read_meta(path: str) -> Optional[Dict[str, Any]]:
  """The meta.json of an export of ours at `path`, or None if it is not one."""
  meta_path = os.path.join(path, META)
  if os.path.islink(meta_path) or not os.path.isfile(meta_path):
    return None
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
    return None
  return meta


def _in_layout(entry: str, partial: bool) -> bool:
  if partial:  # orbax's work folder: the same files one level down
    m = _ORBAX_TMP.match(entry)
    if m:
      entry = "variables/" + entry[m.end():]
  if entry.endswith("/"):
    return bool(_DIR.fullmatch(entry))
  return bool(_FILE.fullmatch(entry))


def written_by_export(meta: Dict[str, Any]) -> Optional[set]:
  """The entries an export's meta.json lists, or None for an older export."""
  files = meta.get(FILES_KEY)
  if isinstance(files, list) and all(isinstance(e, str) for e in files):
    return set(files)
  return None


def foreign_entries(path: str, meta: Optional[Dict[str, Any]],
                    partial_marker: Optional[str] = None) -> List[str]:
  """Entries under the export `path` that it did not write, sorted.

  Args:
    path: an export folder (or our work folder of one).
    meta: its meta.json (None: a work folder written before it).
    partial_marker: for our work folder of an unfinished export, the name
      of the marker file that says so; orbax's own work folder is then ours.

  Returns:
    The relative paths of the entries that are not the export's.
  """
  written = written_by_export(meta) if meta is not None else None
  ours = {META}
  if partial_marker:
    ours.add(partial_marker)
  found = list_entries(path)
  if written is not None:
    return [e for e in found if e not in written and e not in ours]
  partial = bool(partial_marker)
  return [e for e in found if e not in ours and not _in_layout(e, partial)]


def describe_foreign(foreign: List[str]) -> str:
  """'notes.txt' or 'a/notes.txt' and 2 more, for a one-line message."""
  more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
  return f"{foreign[0]!r}{more}"


def remove_export(path: str, meta: Optional[Dict[str, Any]],
                  partial_marker: Optional[str] = None) -> List[str]:
  """Removes the entries of an export of ours, and nothing else.

  Files go first, meta.json last but for the folders, so an interrupted
  removal still leaves a folder that is recognisably ours.

  Args:
    path: the export folder (or our work folder of one).
    meta: its meta.json, or None for a work folder.
    partial_marker: see `foreign_entries`.

  Returns:
    The entries that are not the export's and were kept (empty when `path`
    is gone).
  """
  foreign = set(foreign_entries(path, meta, partial_marker))
  found = list_entries(path)
  files = [e for e in found if not e.endswith("/") and e not in foreign]
  for entry in sorted(files, key=lambda e: e == META):
    os.remove(os.path.join(path, entry))
  folders = [e for e in found if e.endswith("/") and e not in foreign]
  for entry in sorted(folders, key=lambda e: -e.count("/")):
    try:
      os.rmdir(os.path.join(path, entry))
    except OSError:  # it holds a foreign entry, which stays
      pass
  if not foreign:
    os.rmdir(path)
  else:
    logging.warning("%s kept %d entries that simclr_jax did not write: %s",
                    path, len(foreign), describe_foreign(sorted(foreign)))
  return sorted(foreign)


# Names of our own work folders beside an export being written or replaced.
PARTIAL = ".simclr_jax-partial"
REPLACED = ".simclr_jax-replaced"
PARTIAL_MARKER = ".simclr_jax_partial"  # inside a folder we are writing


def is_export(path: str) -> bool:
  """Whether `path` is an export made by simclr_jax and holds nothing else.

  Nothing else at any depth: every entry is one its meta.json lists as
  written (older exports: one of the export layout, see the module
  docstring).
  """
  if os.path.islink(path) or not os.path.isdir(path):
    return False
  meta = read_meta(path)
  return meta is not None and not foreign_entries(path, meta)


def check_target(out_dir: str, field: str = "--out") -> None:
  """Refuses an output path that is not ours to replace; call before work.

  Allowed: a path that does not exist, an empty folder, or an export made by
  simclr_jax holding only what it wrote, at any depth (it is then replaced
  atomically). Anything else (a workdir, a folder with a user's files, an
  export with a user's file in one of its sub-folders, a file) is refused
  without touching it.

  Args:
    out_dir: the export directory to write.
    field: the flag or config field that named it, for the message.

  Raises:
    ConfigError: naming the path and the first entry that is not ours.
  """
  if not os.path.lexists(out_dir):
    return
  if os.path.isdir(out_dir) and not os.path.islink(out_dir):
    entries = sorted(os.listdir(out_dir))
    if not entries:
      return
    meta = read_meta(out_dir)
    if meta is not None:
      foreign = foreign_entries(out_dir, meta)
      if not foreign:
        return
      raise config_lib.ConfigError(
          f"{field}={out_dir!r} is invalid: it is an export made by "
          f"simclr_jax that also holds {describe_foreign(foreign)}"
          ", which the export did not write; nothing was written or deleted. "
          "Move that out or choose a new directory")
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    what = f"a folder holding {shown}"
  else:
    what = "a file or link"
  raise config_lib.ConfigError(
      f"{field}={out_dir!r} is invalid: it is {what}, not an export made by "
      "simclr_jax; nothing was written or deleted. Choose a new directory")


def clear_leftover(path: str) -> None:
  """Removes a work folder of an earlier interrupted export, if all ours."""
  if not os.path.lexists(path):
    return
  meta = marker = None
  if os.path.isdir(path) and not os.path.islink(path):
    meta = read_meta(path)
    if os.path.exists(os.path.join(path, PARTIAL_MARKER)):
      marker = PARTIAL_MARKER
  if meta is None and marker is None:
    raise config_lib.ConfigError(
        f"{path!r} is in the way of the export beside it and was not made "
        "by simclr_jax; nothing was deleted. Move it away")
  foreign = foreign_entries(path, meta, marker)
  if foreign:
    raise config_lib.ConfigError(
        f"{path!r} is in the way of the export beside it and holds "
        f"{describe_foreign(foreign)}, which simclr_jax did not write; "
        "nothing was deleted. Move it away")
  remove_export(path, meta, marker)
