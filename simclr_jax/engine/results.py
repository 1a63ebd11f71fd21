"""Results JSON files and the stored config of a workdir.

Every mode ends by writing `<workdir>/<mode>_results.json`; every run stores
the config its checkpoints were made with as `<workdir>/config.json`, which
exports, evaluations and resumed runs read back.
"""

import json
import os
from typing import Any, Dict

import jax
import ml_collections
import numpy as np
from etils import epath

CONFIG_FILE = "config.json"


def write_results(workdir: str, name: str, results: Dict[str, Any]) -> str:
  """Writes `results` as `<workdir>/<name>.json` from process 0; returns the path."""
  directory = epath.Path(workdir)
  path = os.path.join(workdir, f"{name}.json")
  if jax.process_index() == 0:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, sort_keys=True, default=_jsonable)
    if "://" in workdir:  # object stores write whole objects atomically
      epath.Path(path).write_text(text)
    else:  # a reader never sees a half-written file
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, path)
  return path


def _jsonable(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if hasattr(x, "to_dict"):
    return x.to_dict()
  return str(x)


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The configuration a workdir's checkpoints were made with.

  Args:
    workdir: a run directory of python -m simclr_jax.main.

  Returns:
    The ConfigDict stored in `<workdir>/config.json`.

  Raises:
    ValueError: if the workdir has no stored config.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"workdir {workdir!r} has no {CONFIG_FILE}: it is not a "
                     "run directory of python -m simclr_jax.main")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
