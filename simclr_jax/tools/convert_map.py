"""Variable names of official SimCLR TF2 checkpoints and the leaves they fill.

The official code (google-research/simclr `tf2/resnet.py`, `tf2/model.py`)
builds Keras layers in Python lists, so a variable's checkpoint key holds the
list index of its layer, e.g.
`model/resnet_model/block_groups/1/layers/0/projection_layers/0/conv2d/kernel`.
`official_variable_map` spells out, for an architecture, every such key and
the leaf of our {'params', 'batch_stats'} tree it fills; `infer_config` reads
the architecture back from the keys and shapes of a checkpoint.
"""

import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from simclr_jax.models.resnet import (BASE_WIDTHS, BOTTLENECK_DEPTHS,
                                      IMAGENET_STEM_KERNEL, STAGE_SIZES,
                                      STAGE_STRIDES)
from simclr_jax.models.simclr import representation_dim, validate_model_config

RESNET = "model/resnet_model"
STEM = RESNET + "/initial_conv_relu_max_pool"
HEAD = "model/_projection_head/linear_layers"
SUP = "model/supervised_head/linear_layer/dense"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Non-model objects of the official `tf.train.Checkpoint(model=...,
# global_step=..., optimizer=...)`, its object graph and optimizer slots.
SKIPPED_OBJECTS = ("optimizer", "global_step", "save_counter")
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
SLOT_MARKER = "/.OPTIMIZER_SLOT/"
# Fixed by the official code: resnet.BATCH_NORM_EPSILON, --batch_norm_decay.
OFFICIAL_BN_EPSILON = 1e-5
OFFICIAL_BN_MOMENTUM = 0.9

Leaf = Tuple[str, ...]  # (collection, module, ..., variable)


def is_skipped(key: str) -> bool:
  """Whether a checkpoint key is no model variable (optimizer, counters).

  Args:
    key: a key of `tf.train.load_checkpoint(...).get_variable_to_shape_map()`.

  Returns:
    True for the object graph, optimizer slots and non-model top-level objects.
  """
  return (key == OBJECT_GRAPH_KEY or SLOT_MARKER in key or
          key.split("/", 1)[0] in SKIPPED_OBJECTS)


def variable_name(key: str) -> str:
  """The key without the object-based checkpoint's value suffix."""
  return key[:-len(VALUE_SUFFIX)] if key.endswith(VALUE_SUFFIX) else key


def _conv(official: str, ours: Sequence[str]) -> Dict[str, Leaf]:
  return {official + "/kernel": ("params",) + tuple(ours) + ("kernel",)}


def _bn(official: str, ours: Sequence[str], center: bool = True
        ) -> Dict[str, Leaf]:
  ours = tuple(ours)
  out = {official + "/gamma": ("params",) + ours + ("scale",),
         official + "/moving_mean": ("batch_stats",) + ours + ("mean",),
         official + "/moving_variance": ("batch_stats",) + ours + ("var",)}
  if center:
    out[official + "/beta"] = ("params",) + ours + ("bias",)
  return out


def _stem_map(stem: str, deep: bool) -> Dict[str, Leaf]:
  """Stem layer lists: [conv, identity, bn, (pool, identity)] or deep stem."""
  if stem == "imagenet" and deep:
    convs, bns = (0, 2, 4), (1, 3, 6)
  else:
    convs, bns = (0,), (2,)
  out = {}
  for i, (c, b) in enumerate(zip(convs, bns)):
    out.update(_conv(f"{STEM}/{c}/conv2d", ("encoder", f"stem_conv{i}")))
    out.update(_bn(f"{STEM}/{b}/bn", ("encoder", f"stem_bn{i}")))
  return out


def _block_map(prefix: str, ours: Tuple[str, ...], bottleneck: bool,
               sk: bool, projection: bool, strides: int) -> Dict[str, Leaf]:
  """One residual block; list indices skip the weightless layers."""
  out = {}
  if projection:
    # ResNet-D: [FixedPadding (strided only), AvgPool, conv, bn].
    first = (2 if strides > 1 else 1) if sk else 0
    lst = prefix + ("/projection_layers" if bottleneck else "/shortcut_layers")
    out.update(_conv(f"{lst}/{first}/conv2d", ours + ("proj_conv",)))
    out.update(_bn(f"{lst}/{first + 1}/bn", ours + ("proj_bn",)))
  if not bottleneck:
    lst = prefix + "/conv2d_bn_layers"
    layers = ((0, "conv1"), (1, "bn1"), (2, "conv2"), (3, "bn2"))
  else:
    lst = prefix + "/conv_relu_dropblock_layers"
    if sk:  # [conv, bn, dropblock, SK, dropblock, conv, bn, dropblock]
      layers = ((0, "conv1"), (1, "bn1"), (5, "conv3"), (6, "bn3"))
      sk_pre, sk_ours = f"{lst}/3", ours + ("sk_conv",)
      out.update(_conv(f"{sk_pre}/conv2d_fixed_padding/conv2d",
                       sk_ours + ("conv",)))
      out.update(_bn(f"{sk_pre}/batch_norm_relu/bn", sk_ours + ("bn",)))
      out.update(_conv(f"{sk_pre}/conv2d_0", sk_ours + ("fc1",)))
      out.update(_bn(f"{sk_pre}/batch_norm_relu_1/bn", sk_ours + ("fc1_bn",)))
      out.update(_conv(f"{sk_pre}/conv2d_1", sk_ours + ("fc2",)))
    else:  # [conv, bn, dropblock] x 3
      layers = ((0, "conv1"), (1, "bn1"), (3, "conv2"), (4, "bn2"),
                (6, "conv3"), (7, "bn3"))
  for index, name in layers:
    if name.startswith("conv"):
      out.update(_conv(f"{lst}/{index}/conv2d", ours + (name,)))
    else:
      out.update(_bn(f"{lst}/{index}/bn", ours + (name,)))
  return out


def official_variable_map(model_cfg: Mapping[str, Any], num_classes: int
                          ) -> Dict[str, Leaf]:
  """Every official variable name of an architecture and the leaf it fills.

  Args:
    model_cfg: model config (see `simclr_jax.models.validate_model_config`).
    num_classes: classes of the supervised head (0 = none).

  Returns:
    {name without VALUE_SUFFIX: ('params' | 'batch_stats', *module path,
    variable)}.
  """
  cfg = validate_model_config(model_cfg)
  bottleneck = cfg["depth"] in BOTTLENECK_DEPTHS
  sk = cfg["sk_ratio"] > 0
  out = _stem_map(cfg["stem"], sk)
  stage_sizes = cfg.get("stage_sizes", STAGE_SIZES[cfg["depth"]])
  for g, blocks in enumerate(stage_sizes):
    for b in range(blocks):
      out.update(_block_map(f"{RESNET}/block_groups/{g}/layers/{b}",
                            ("encoder", f"stage{g}_block{b}"), bottleneck, sk,
                            b == 0, STAGE_STRIDES[g] if b == 0 else 1))
  last = cfg["head_layers"] - 1
  for k in range(cfg["head_layers"]):
    out.update(_conv(f"{HEAD}/{k}/dense", ("head", f"dense{k}")))
    out.update(_bn(f"{HEAD}/{k}/bn_relu/bn", ("head", f"bn{k}"), k != last))
  if num_classes > 0:
    out[SUP + "/kernel"] = ("params", "sup_head", "dense", "kernel")
    out[SUP + "/bias"] = ("params", "sup_head", "dense", "bias")
  return out


def _indices(names, pattern: str) -> Dict[int, int]:
  """Maps the first captured index to 1 + the largest second one (if any)."""
  found = {}
  for name in names:
    m = re.match(pattern, name)
    if m:
      groups = [int(x) for x in m.groups()]
      found[groups[0]] = max(found.get(groups[0], 0),
                             groups[1] + 1 if len(groups) > 1 else 1)
  return found


def infer_config(shapes: Mapping[str, Sequence[int]],
                 overrides: Optional[Mapping[str, Any]] = None
                 ) -> Tuple[Dict[str, Any], int]:
  """Reads the architecture from official variable names and shapes.

  Args:
    shapes: {variable name (no VALUE_SUFFIX): shape} of the model variables.
    overrides: model-config fields (and 'num_classes') that replace inferred
      values; 'stage_sizes', 'base_widths', 'sk_min_dim' for non-standard nets.

  Returns:
    (validated model config dict, num_classes).

  Raises:
    ValueError: when the names are not those of an official SimCLR model.
  """
  o = dict(overrides or {})
  names = list(shapes)
  base_widths = tuple(o.get("base_widths", BASE_WIDTHS))
  if not any(n.startswith(RESNET + "/") for n in names):
    raise ValueError(f"no variable under {RESNET}/: not an official SimCLR "
                     "TF2 checkpoint")
  bottleneck = any("/conv_relu_dropblock_layers/" in n for n in names)
  groups = _indices(names, re.escape(RESNET) +
                    r"/block_groups/(\d+)/layers/(\d+)/")
  stage_sizes = tuple(groups.get(g, 0) for g in range(len(groups)))
  depth = o.get("depth")
  if depth is None:
    kind = BOTTLENECK_DEPTHS if bottleneck else tuple(
        d for d in STAGE_SIZES if d not in BOTTLENECK_DEPTHS)
    matches = [d for d in kind if STAGE_SIZES[d] == stage_sizes]
    if not matches:
      raise ValueError(f"blocks per stage {stage_sizes} ("
                       f"{'bottleneck' if bottleneck else 'basic'} blocks) "
                       "match no official depth; pass depth (and "
                       "stage_sizes) as overrides")
    depth = matches[0]
  stem_convs = sorted(_indices(names,
                               re.escape(STEM) + r"/(\d+)/conv2d/kernel$"))
  if not stem_convs:
    raise ValueError(f"no stem convolution under {STEM}/")
  stem_kernel = shapes[f"{STEM}/{stem_convs[-1]}/conv2d/kernel"]
  deep_stem = len(stem_convs) > 1
  imagenet = deep_stem or stem_kernel[0] == IMAGENET_STEM_KERNEL
  stem = "imagenet" if imagenet else "cifar"
  width, rest = divmod(int(stem_kernel[-1]), base_widths[0])
  if rest or width < 1:
    raise ValueError(f"stem output width {stem_kernel[-1]} is no multiple of "
                     f"{base_widths[0]}; pass width (or base_widths)")
  sk_ratio = o.get("sk_ratio")
  if sk_ratio is None:
    last = len(stage_sizes) - 1
    mix = (f"{RESNET}/block_groups/{last}/layers/0/conv_relu_dropblock_layers/"
           "3/conv2d_0/kernel")
    plain = any(re.search(r"/block_groups/0/layers/0/(shortcut|projection)_"
                          r"layers/0/conv2d/kernel$", n) for n in names)
    if mix in shapes:
      # Mixing width = max(int(filters * sk_ratio), sk_min_dim); the widest
      # stage gives a ratio that reproduces every stage's width.
      sk_ratio = shapes[mix][-1] / shapes[mix][-2]
    elif deep_stem or not plain:
      raise ValueError("the checkpoint has ResNet-D layers but no selective "
                       "kernels to read sk_ratio from; pass sk_ratio")
    else:
      sk_ratio = 0.0
  head = _indices(names, re.escape(HEAD) + r"/(\d+)/")
  head_layers = len(head)
  if head_layers == 0:
    raise ValueError(f"no projection head under {HEAD}/")
  proj_dim = shapes[f"{HEAD}/{head_layers - 1}/dense/kernel"][-1]
  cfg = dict(depth=depth, width=width, sk_ratio=float(sk_ratio), stem=stem,
             bn_momentum=OFFICIAL_BN_MOMENTUM, bn_epsilon=OFFICIAL_BN_EPSILON,
             head_layers=head_layers, head_hidden_dim=0, proj_dim=int(proj_dim),
             sup_head_from=0, dtype="float32")
  cfg.update({k: v for k, v in o.items() if k != "num_classes"})
  rep = representation_dim(cfg)
  if head_layers > 1 and "head_hidden_dim" not in o:
    hidden = int(shapes[f"{HEAD}/0/dense/kernel"][-1])
    cfg["head_hidden_dim"] = 0 if hidden == rep else hidden
  num_classes = 0
  if SUP + "/kernel" in shapes:
    in_dim, num_classes = (int(s) for s in shapes[SUP + "/kernel"])
    if "sup_head_from" not in o and in_dim != rep:
      # Official ft_proj_selector: the first head layer of matching width.
      widths = [cfg["head_hidden_dim"] or rep] * (head_layers - 1) + [proj_dim]
      cfg["sup_head_from"] = next(
          (k + 1 for k, w in enumerate(widths) if w == in_dim), 0)
  num_classes = o.get("num_classes", num_classes)
  return validate_model_config(cfg), num_classes
