r"""Imports an official SimCLR TF2 checkpoint as a simclr_jax export.

Reads an object-based checkpoint of google-research/simclr `tf2/` (the released
SimCLR v1/v2 checkpoints, or one written by its `run.py`), infers the
architecture from the variable names and shapes, fills every leaf of our
{'params', 'batch_stats'} tree from exactly one checkpoint variable, and
writes an export readable by `simclr_jax.exports.format.load_export`.

Every model variable must map to one leaf and every leaf must receive one
variable of the same shape; anything else fails, naming the variable. Only the
optimizer, its slots, the step counters and the object graph are skipped.

  python -m simclr_jax.convert --tf2_checkpoint=PATH/ckpt-N --out=EXPORT_DIR \
      [--depth=50 --width=1 --sk_ratio=0.0625 --num_classes=1000 ...]
"""

import collections
import functools
import glob
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import config as config_lib
from simclr_jax.engine import logs
from simclr_jax.engine import progress
from simclr_jax.exports import format as export_lib
from simclr_jax.models import build_model, count_params, min_input_size
from simclr_jax.tools import convert_map

# Input side of the official code: image_size, or <= 32 for the CIFAR stem.
OFFICIAL_IMAGE_SIZE = {"imagenet": 224, "cifar": 32}


def official_crop(image_size: int) -> float:
  """The official evaluation crop: 0.875 of the shorter side above 32 px."""
  return export_lib.OFFICIAL_CROP if image_size > 32 else 1.0
_MAX_SHOWN = 30


def _flat_shapes(tree: Mapping[str, Any], prefix=()) -> Dict[tuple, tuple]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flat_shapes(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = tuple(v.shape)
  return out


def _set_leaf(tree: Dict[str, Any], path: tuple, value: np.ndarray) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _raise_if(problems, what: str) -> None:
  if problems:
    shown = "\n  ".join(problems[:_MAX_SHOWN])
    more = len(problems) - _MAX_SHOWN
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise ValueError(f"{what}:\n  {shown}{tail}")


def model_leaf_shapes(model_cfg: Mapping[str, Any], num_classes: int
                      ) -> Dict[tuple, tuple]:
  """Shapes of every leaf of the model's variables, without computing them.

  Args:
    model_cfg: model config (see `simclr_jax.models.validate_model_config`).
    num_classes: classes of the supervised head (0 = none).

  Returns:
    {('params' | 'batch_stats', *path): shape}.
  """
  model = build_model(model_cfg, num_classes)
  side = min_input_size(model.stem)
  images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), images)
  return _flat_shapes(abstract)


def match_variables(shapes: Mapping[str, tuple], model_cfg: Mapping[str, Any],
                    num_classes: int) -> Dict[str, tuple]:
  """Checks that checkpoint variables and model leaves correspond one to one.

  Args:
    shapes: {official variable name: shape} of the checkpoint's model
      variables (skipped objects already removed).
    model_cfg: model config to import into.
    num_classes: classes of the supervised head (0 = none).

  Returns:
    {official variable name: leaf path} covering every leaf exactly once.

  Raises:
    ValueError: listing unmapped or missing variables, leaves left without a
      value and shape mismatches, each by name.
  """
  mapping = convert_map.official_variable_map(model_cfg, num_classes)
  leaves = model_leaf_shapes(model_cfg, num_classes)
  problems = []
  for name in sorted(set(shapes) - set(mapping)):
    problems.append(f"unmapped checkpoint variable {name} {list(shapes[name])}")
  for name in sorted(set(mapping) - set(shapes)):
    problems.append(f"missing checkpoint variable {name} (for "
                    f"{'/'.join(mapping[name])})")
  counts = collections.Counter(mapping.values())
  for leaf in sorted(set(leaves) - set(counts)):
    problems.append(f"model leaf {'/'.join(leaf)} receives no variable")
  for leaf in sorted(set(counts) - set(leaves)):
    problems.append(f"mapped leaf {'/'.join(leaf)} is not in the model")
  for leaf, n in sorted(counts.items()):
    if n > 1:
      problems.append(f"model leaf {'/'.join(leaf)} receives {n} variables")
  for name in sorted(set(shapes) & set(mapping)):
    leaf = mapping[name]
    if leaf in leaves and tuple(shapes[name]) != leaves[leaf]:
      problems.append(f"shape mismatch: checkpoint variable {name} has "
                      f"{list(shapes[name])}, model leaf {'/'.join(leaf)} "
                      f"has {list(leaves[leaf])}")
  _raise_if(problems, f"the checkpoint does not fit the model {dict(model_cfg)}"
            f" with num_classes={num_classes}")
  return mapping


def convert_tf2_checkpoint(path: str,
                           overrides: Optional[Mapping[str, Any]] = None
                           ) -> Tuple[Dict[str, Any], Dict[str, Any], int]:
  """Reads an official SimCLR TF2 checkpoint into our variables.

  Args:
    path: checkpoint prefix (e.g. '.../ckpt-12345') or its directory.
    overrides: model-config fields (and 'num_classes') to use instead of the
      inferred ones (see `convert_map.infer_config`).

  Returns:
    (variables, model_cfg, num_classes): {'params', 'batch_stats'} as float32
    NumPy trees, the validated model config dict and the supervised head size.

  Raises:
    ValueError: on a variable that maps to no leaf, a leaf without a variable,
      or a shape mismatch (each named).
  """
  if "://" not in path and not (os.path.exists(path) or
                                glob.glob(glob.escape(path) + ".*")):
    config_lib.fail("--tf2_checkpoint", path, "no such file or directory")
  with logs.native_stderr_filtered():  # TensorFlow's start-up lines
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(path)
  except (tf.errors.NotFoundError, ValueError) as e:
    config_lib.fail("--tf2_checkpoint", path, "not a TF2 checkpoint prefix "
                    f"or directory ({' '.join(str(e).split())[:200]})")
  keys, shapes, skipped = {}, {}, []
  for key, shape in reader.get_variable_to_shape_map().items():
    if convert_map.is_skipped(key):
      skipped.append(key)
      continue
    name = convert_map.variable_name(key)
    keys[name], shapes[name] = key, tuple(shape)
  logging.info("%d model variables, %d skipped (optimizer, counters)",
               len(shapes), len(skipped))
  model_cfg, num_classes = convert_map.infer_config(shapes, overrides)
  mapping = match_variables(shapes, model_cfg, num_classes)
  variables: Dict[str, Any] = {}
  problems = []
  for name, leaf in progress.track(mapping.items(), desc="reading checkpoint",
                                   unit="variables"):
    value = np.asarray(reader.get_tensor(keys[name]))
    if not np.issubdtype(value.dtype, np.floating):
      problems.append(f"checkpoint variable {name} has dtype {value.dtype}")
    _set_leaf(variables, leaf, value.astype(np.float32))
  _raise_if(problems, "non-float model variables")
  return variables, model_cfg, num_classes


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  flags.DEFINE_string("tf2_checkpoint", None,
                      "official SimCLR TF2 checkpoint prefix or directory")
  flags.DEFINE_string("out", None, "export directory to write")
  flags.DEFINE_integer("depth", None, "override: ResNet depth")
  flags.DEFINE_integer("width", None, "override: width multiplier")
  flags.DEFINE_float("sk_ratio", None, "override: selective-kernel ratio")
  flags.DEFINE_enum("stem", None, ["cifar", "imagenet"], "override: stem")
  flags.DEFINE_integer("num_classes", None,
                       "override: supervised head classes")
  flags.DEFINE_integer("sup_head_from", None, "override: supervised head "
                       "input (official ft_proj_selector; 0 = h)")
  flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                    "override: compute dtype stored in the export")
  flags.DEFINE_integer("image_size", None, "input side recorded in the "
                       "export (default: the official one for the stem)")
  flags.mark_flags_as_required(["tf2_checkpoint", "out"])


def convert_to_export(tf2_checkpoint: str, out: str,
                      overrides: Optional[Dict[str, Any]] = None,
                      image_size: Optional[int] = None) -> Dict[str, Any]:
  """Converts an official TF2 checkpoint into the export `out`.

  The export records the official evaluation preprocessing (0.875 centre
  crop above 32 px), so embedding and evaluation need no flag for it.

  Args:
    tf2_checkpoint: the checkpoint prefix (or its directory).
    out: the export directory to write.
    overrides: architecture fields to force (see the flags).
    image_size: input side to record (default: the official one).

  Returns:
    The export's meta.json.
  """
  export_lib.check_export_target(os.path.abspath(out))  # before any work
  variables, model_cfg, num_classes = convert_tf2_checkpoint(
      tf2_checkpoint, overrides or {})
  image_size = image_size or OFFICIAL_IMAGE_SIZE[model_cfg["stem"]]
  logging.info("model %s, num_classes=%d, %d parameters (encoder %d)",
               model_cfg, num_classes, count_params(variables["params"]),
               count_params(variables["params"]["encoder"]))
  export_lib.save_export(out, variables, model_cfg, num_classes,
                         image_size, extra={
                             "source": "official SimCLR TF2 checkpoint",
                             "tf2_checkpoint": tf2_checkpoint},
                         crop_proportion=official_crop(image_size))
  logging.info("wrote %s", out)
  return export_lib.read_export_meta(out)


def main(argv) -> None:
  """Converts --tf2_checkpoint into the export --out."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fv = flags.FLAGS
  names = ("depth", "width", "sk_ratio", "stem", "num_classes",
           "sup_head_from", "dtype")
  overrides = {k: fv[k].value for k in names if fv[k].value is not None}
  convert_to_export(fv.tf2_checkpoint, fv.out, overrides, fv.image_size)


def cli() -> None:
  """The command line: python -m simclr_jax.convert."""
  define_flags()
  logs.run_app(main)
