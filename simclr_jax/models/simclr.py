"""The SimCLR model (encoder, projection head, supervised head) and its builder.

Parameters live under three top-level names so that training code can freeze
or mask by tree path: `encoder` (the ResNet), `head` (projection head) and
`sup_head` (linear classifier, present when num_classes > 0).
"""

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax import config as config_lib
from simclr_jax.models.heads import ProjectionHead, SupervisedHead
from simclr_jax.models.resnet import (BASE_WIDTHS, BOTTLENECK_DEPTHS,
                                      EXPANSION, SK_MIN_DIM, STAGE_SIZES,
                                      STAGE_STRIDES, STEMS, ResNet)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REQUIRED_KEYS = ("depth", "width", "sk_ratio", "stem", "bn_momentum",
                 "bn_epsilon", "head_layers", "head_hidden_dim", "proj_dim",
                 "sup_head_from", "dtype")
# Optional structural knobs (tiny test models, the projection-head ablation);
# absent = the official values.
OPTIONAL_KEYS = ("stage_sizes", "base_widths", "sk_min_dim", "proj_head")


class SimCLRModel(nn.Module):
  """ResNet encoder f, projection head g and an optional linear head.

  Attributes:
    stage_sizes: blocks per ResNet stage.
    bottleneck: bottleneck (depth >= 50) instead of basic blocks.
    width: integer width multiplier.
    sk_ratio: selective-kernel ratio (0 = off).
    stem: 'cifar' or 'imagenet'.
    bn_momentum: decay of the BatchNorm moving averages.
    bn_epsilon: BatchNorm epsilon.
    head_layers: projection-head layers built (0 = no head, z = h).
    head_hidden_dim: middle width of the head (0 = width of h).
    proj_dim: width of z.
    num_classes: logits of the supervised head (0 = no supervised head).
    sup_head_from: supervised head input: 0 = h, k = output of head layer k.
    sup_stop_gradient: stop gradients into the supervised head's input.
    axis_name: mesh axis for global BatchNorm (None = local statistics).
    dtype: compute dtype; parameters and BN statistics stay float32.
    base_widths: channels of each stage at width 1.
    sk_min_dim: lower bound of the selective-kernel mixing width.
  """
  stage_sizes: Tuple[int, ...]
  bottleneck: bool
  width: int
  sk_ratio: float
  stem: str
  bn_momentum: float
  bn_epsilon: float
  head_layers: int
  head_hidden_dim: int
  proj_dim: int
  num_classes: int
  sup_head_from: int = 0
  sup_stop_gradient: bool = True
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  base_widths: Tuple[int, ...] = BASE_WIDTHS
  sk_min_dim: int = SK_MIN_DIM

  def setup(self):
    self.encoder = ResNet(self.stage_sizes, self.bottleneck, self.width,
                          self.sk_ratio, self.stem, self.bn_momentum,
                          self.bn_epsilon, self.axis_name, self.dtype,
                          self.base_widths, self.sk_min_dim)
    self.head = ProjectionHead(self.head_layers, self.head_hidden_dim,
                               self.proj_dim, self.bn_momentum,
                               self.bn_epsilon, self.axis_name, self.dtype)
    if self.num_classes > 0:
      self.sup_head = SupervisedHead(self.num_classes, self.dtype)

  def encode(self, images, train: bool = False):
    """Returns the representation h [B, C] (float32) of images in [0, 1]."""
    return self.encoder(images, train)

  def __call__(self, images, train: bool) -> Dict[str, Any]:
    """Runs encoder and heads.

    Args:
      images: float images [B, H, W, 3] in [0, 1].
      train: batch statistics (and their update) instead of moving averages.

    Returns:
      {'h': [B, C], 'proj': tuple of every head layer's output, 'z': the last
      of them, 'logits': [B, num_classes] when num_classes > 0}, all float32.
    """
    h = self.encoder(images, train)
    proj = tuple(p.astype(jnp.float32) for p in self.head(h, train))
    # No head (the paper's "None" projection): the loss sees h itself.
    out = {"h": h, "proj": proj, "z": proj[-1] if proj else h}
    if self.num_classes > 0:
      feats = (h,) + proj
      x = feats[self.sup_head_from]
      if self.sup_stop_gradient:
        # Online linear probe: its loss must not shape the representation.
        x = jax.lax.stop_gradient(x)
      out["logits"] = self.sup_head(x).astype(jnp.float32)
    return out


def _fail(field: str, value: Any, allowed: str) -> None:
  config_lib.fail(f"model.{field}", value, allowed)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(cfg: Mapping[str, Any], field: str, default: Tuple[int, ...]):
  value = cfg.get(field, None)
  if value is None:
    return tuple(default)
  # Fewer stages than the official four: small nets for small images (a
  # 16 px input is 2 px wide after the fourth stage's stride).
  most = len(STAGE_STRIDES)
  if isinstance(value, str) or not 1 <= len(tuple(value)) <= most or not all(
      _is_int(v) and v >= 1 for v in value):
    _fail(field, value, f"1 to {most} positive integers (one per stage) are "
          "required")
  return tuple(value)


def validate_model_config(model_cfg: Mapping[str, Any]) -> Dict[str, Any]:
  """Checks a model config and returns it as a plain JSON-able dict.

  Args:
    model_cfg: ConfigDict or dict with the keys of `REQUIRED_KEYS` (and
      optionally `OPTIONAL_KEYS`); other keys are ignored.

  Returns:
    The validated fields (optional ones only when set).

  Raises:
    ValueError: naming the field, its value and what is allowed.
  """
  cfg = dict(model_cfg.items())
  for key in REQUIRED_KEYS:
    if key not in cfg:
      raise ValueError(f"model.{key} is missing; required fields are "
                       f"{REQUIRED_KEYS}")
  if cfg["depth"] not in STAGE_SIZES:
    _fail("depth", cfg["depth"], f"allowed values are {tuple(STAGE_SIZES)}")
  if not _is_int(cfg["width"]) or cfg["width"] < 1:
    _fail("width", cfg["width"], "a positive integer is required")
  if isinstance(cfg["sk_ratio"], bool) or not isinstance(
      cfg["sk_ratio"], (int, float)) or not 0 <= cfg["sk_ratio"] < 1:
    _fail("sk_ratio", cfg["sk_ratio"], "a number in [0, 1) is required "
          "(0 = no selective kernels)")
  if cfg["stem"] not in STEMS:
    _fail("stem", cfg["stem"], f"allowed values are {STEMS} (resolve 'auto' "
          "with simclr_jax.config.resolve_stem before building the model)")
  if not 0 <= cfg["bn_momentum"] < 1:
    _fail("bn_momentum", cfg["bn_momentum"], "must be in [0, 1)")
  if not cfg["bn_epsilon"] > 0:
    _fail("bn_epsilon", cfg["bn_epsilon"], "must be > 0")
  if not _is_int(cfg["head_layers"]) or cfg["head_layers"] < 1:
    _fail("head_layers", cfg["head_layers"], "an integer >= 1 is required")
  if not _is_int(cfg["head_hidden_dim"]) or cfg["head_hidden_dim"] < 0:
    _fail("head_hidden_dim", cfg["head_hidden_dim"],
          "an integer >= 0 is required (0 = width of h)")
  if not _is_int(cfg["proj_dim"]) or cfg["proj_dim"] < 1:
    _fail("proj_dim", cfg["proj_dim"], "a positive integer is required")
  proj_head = cfg.get("proj_head", None) or "nonlinear"
  if proj_head not in config_lib.PROJ_HEADS:
    _fail("proj_head", proj_head,
          f"allowed values are {config_lib.PROJ_HEADS}")
  depth = config_lib.head_depth(proj_head, cfg["head_layers"])
  if not _is_int(cfg["sup_head_from"]) or not (
      0 <= cfg["sup_head_from"] <= depth):
    _fail("sup_head_from", cfg["sup_head_from"],
          f"an integer in [0, {depth}] (the layers of the {proj_head!r} "
          "projection head) is required")
  if cfg["dtype"] not in DTYPES:
    _fail("dtype", cfg["dtype"], f"allowed values are {tuple(DTYPES)}")
  out = {k: cfg[k] for k in REQUIRED_KEYS}
  out["sk_ratio"] = float(out["sk_ratio"])
  out["bn_momentum"] = float(out["bn_momentum"])
  out["bn_epsilon"] = float(out["bn_epsilon"])
  stage_sizes = _int_tuple(cfg, "stage_sizes", STAGE_SIZES[cfg["depth"]])
  base_widths = _int_tuple(cfg, "base_widths", BASE_WIDTHS)
  sk_min_dim = cfg.get("sk_min_dim", None)
  if sk_min_dim is not None and (not _is_int(sk_min_dim) or sk_min_dim < 1):
    _fail("sk_min_dim", sk_min_dim, "a positive integer is required")
  if len(stage_sizes) != len(base_widths):
    _fail("stage_sizes", cfg.get("stage_sizes", None),
          f"one entry per stage of model.base_widths={tuple(base_widths)} "
          "(set both to change the number of stages)")
  if stage_sizes != STAGE_SIZES[cfg["depth"]]:
    out["stage_sizes"] = list(stage_sizes)
  if base_widths != BASE_WIDTHS:
    out["base_widths"] = list(base_widths)
  if sk_min_dim is not None and sk_min_dim != SK_MIN_DIM:
    out["sk_min_dim"] = sk_min_dim
  if proj_head != "nonlinear":
    out["proj_head"] = proj_head
  return out


def build_model(model_cfg: Mapping[str, Any], num_classes: int,
                axis_name: Optional[str] = None,
                sup_stop_gradient: bool = True) -> SimCLRModel:
  """Builds the SimCLR model from a model config.

  Args:
    model_cfg: ConfigDict or dict (see `validate_model_config`).
    num_classes: logits of the supervised head; 0 = no supervised head.
    axis_name: mesh axis for global BatchNorm inside shard_map; None outside.
    sup_stop_gradient: stop gradients into the supervised head (linear probe).

  Returns:
    The (unbound) `SimCLRModel`.

  Raises:
    ValueError: on an invalid field or num_classes.
  """
  cfg = validate_model_config(model_cfg)
  if not _is_int(num_classes) or num_classes < 0:
    raise ValueError(f"num_classes={num_classes!r} is invalid: an integer "
                     ">= 0 is required (0 = no supervised head)")
  return SimCLRModel(
      stage_sizes=tuple(cfg.get("stage_sizes", STAGE_SIZES[cfg["depth"]])),
      bottleneck=cfg["depth"] in BOTTLENECK_DEPTHS,
      width=cfg["width"], sk_ratio=cfg["sk_ratio"], stem=cfg["stem"],
      bn_momentum=cfg["bn_momentum"], bn_epsilon=cfg["bn_epsilon"],
      head_layers=config_lib.head_depth(cfg.get("proj_head", "nonlinear"),
                                        cfg["head_layers"]),
      head_hidden_dim=cfg["head_hidden_dim"],
      proj_dim=cfg["proj_dim"], num_classes=num_classes,
      sup_head_from=cfg["sup_head_from"], sup_stop_gradient=sup_stop_gradient,
      axis_name=axis_name, dtype=DTYPES[cfg["dtype"]],
      base_widths=tuple(cfg.get("base_widths", BASE_WIDTHS)),
      sk_min_dim=cfg.get("sk_min_dim", SK_MIN_DIM))


def representation_dim(model_cfg: Mapping[str, Any]) -> int:
  """Width of h for a model config.

  Args:
    model_cfg: ConfigDict or dict (see `validate_model_config`).

  Returns:
    Channels of the last stage (times `EXPANSION` for bottleneck blocks).
  """
  cfg = validate_model_config(model_cfg)
  last = tuple(cfg.get("base_widths", BASE_WIDTHS))[-1] * cfg["width"]
  return last * EXPANSION if cfg["depth"] in BOTTLENECK_DEPTHS else last


def count_params(params: Any) -> int:
  """Number of scalars in a pytree of arrays (or of `jax.ShapeDtypeStruct`s).

  Args:
    params: e.g. `variables['params']` or one of its subtrees.

  Returns:
    The total element count.
  """
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


# Keys of config.model that describe the architecture (what an export stores).
MODEL_KEYS = ("depth", "width", "sk_ratio", "stem", "bn_momentum", "bn_epsilon",
              "head_layers", "head_hidden_dim", "proj_dim", "sup_head_from",
              "dtype")


def model_config(config: Any) -> Dict[str, Any]:
  """The architecture part of `config.model` as a plain dict, stem resolved."""
  cfg = {k: config.model[k] for k in MODEL_KEYS}
  for key in ("stage_sizes", "base_widths"):  # optional overrides
    if config.model.get(key) is not None:
      cfg[key] = tuple(config.model[key])
  if config.model.get("proj_head", "nonlinear") != "nonlinear":
    cfg["proj_head"] = config.model.proj_head  # the head ablation
  cfg["stem"] = config_lib.resolve_stem(config)
  return cfg
