"""ResNet v1.5 encoders, built exactly as the official SimCLR TF2 code does.

The layout follows google-research/simclr `tf2/resnet.py` so that released
checkpoints load without any change of arithmetic:

* every convolution has no bias and LeCun-normal (fan-in, truncated) init,
  the official `VarianceScaling()` default;
* convolutions pad symmetrically like TF's `fixed_padding` (explicit padding
  then VALID), which for stride 1 equals TF's 'SAME';
* the first block of every stage has a projection shortcut, the first stage
  included (so ResNet-18 has one 1x1 convolution more than torchvision's);
* the last BatchNorm of every residual block starts with a zero scale;
* with selective kernels (`sk_ratio > 0`, SimCLR v2) the ImageNet stem is the
  ResNet-D deep stem (three 3x3 convolutions) and projection shortcuts
  average-pool before their 1x1 convolution; bottleneck blocks replace their
  3x3 convolution by a two-branch selective-kernel convolution.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# Blocks per stage for each depth of the official code.
STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
# Depths built from bottleneck blocks; the others use basic blocks.
BOTTLENECK_DEPTHS = (50, 101, 152, 200)
# Channels of each stage at width multiplier 1 (the stem has the first).
BASE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4  # bottleneck output channels / inner channels
SK_MIN_DIM = 32  # smallest width of the selective-kernel mixing layer
STEMS = ("cifar", "imagenet")
# Architecture constants of the stems and of the ResNet-D shortcut.
CONV_KERNEL = 3
IMAGENET_STEM_KERNEL = 7
IMAGENET_STEM_STRIDE = 2
STEM_POOL_WINDOW = 3
STEM_POOL_STRIDE = 2
RESNET_D_POOL = 2


def fixed_padding(kernel_size: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Spatial padding of TF's `fixed_padding`: (k-1)//2 before, the rest after.

  Args:
    kernel_size: side of the (square) window.

  Returns:
    ((before, after), (before, after)) for height and width.
  """
  total = kernel_size - 1
  before = total // 2
  return ((before, total - before), (before, total - before))


def min_input_size(stem: str) -> int:
  """Total downsampling of the encoder: the smallest input side it accepts.

  Args:
    stem: 'cifar' or 'imagenet'.

  Returns:
    The product of all strides (stem, max-pool and stages).
  """
  size = 1
  for s in STAGE_STRIDES:
    size *= s
  if stem == "imagenet":
    size *= IMAGENET_STEM_STRIDE * STEM_POOL_STRIDE
  return size


def _conv(conv: ModuleDef, features: int, kernel: int, stride: int,
          name: str) -> nn.Module:
  """A bias-free convolution padded like the official `Conv2dFixedPadding`."""
  return conv(features, (kernel, kernel), strides=(stride, stride),
              padding=fixed_padding(kernel), name=name)


def _projection_shortcut(x, filters: int, strides: int, resnet_d: bool,
                         conv: ModuleDef, norm: ModuleDef):
  """Projection shortcut; ResNet-D average-pools instead of striding the 1x1."""
  if resnet_d:
    if strides > 1:
      pad = fixed_padding(RESNET_D_POOL)
      x = jnp.pad(x, ((0, 0),) + pad + ((0, 0),))
      x = nn.avg_pool(x, (RESNET_D_POOL, RESNET_D_POOL),
                      strides=(strides, strides), padding="VALID")
    else:
      # TF 'SAME' average pooling leaves the padded cells out of the mean.
      x = nn.avg_pool(x, (RESNET_D_POOL, RESNET_D_POOL), strides=(1, 1),
                      padding="SAME", count_include_pad=False).astype(x.dtype)
    x = _conv(conv, filters, 1, 1, "proj_conv")(x)
  else:
    x = _conv(conv, filters, 1, strides, "proj_conv")(x)
  return norm(name="proj_bn")(x)


class SelectiveKernelConv(nn.Module):
  """Two-branch selective-kernel 3x3 convolution (official `SK_Conv2D`).

  Attributes:
    filters: output channels (each branch has this many).
    strides: stride of the 3x3 convolution.
    sk_ratio: mixing-layer width as a fraction of `filters`.
    sk_min_dim: lower bound of the mixing-layer width.
    conv: convolution constructor (dtype and init bound).
    norm: BatchNorm constructor (train mode, momentum, epsilon bound).
  """
  filters: int
  strides: int
  sk_ratio: float
  sk_min_dim: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    x = _conv(self.conv, 2 * self.filters, CONV_KERNEL, self.strides, "conv")(x)
    x = nn.relu(self.norm(name="bn")(x))
    a, b = jnp.split(x, 2, axis=-1)
    pooled = jnp.mean(a + b, axis=(1, 2), keepdims=True, dtype=jnp.float32)
    mid = max(int(self.filters * self.sk_ratio), self.sk_min_dim)
    g = self.conv(mid, (1, 1), padding="VALID", name="fc1")(
        pooled.astype(x.dtype))
    g = nn.relu(self.norm(name="fc1_bn")(g))
    mixing = self.conv(2 * self.filters, (1, 1), padding="VALID",
                       name="fc2")(g)
    ma, mb = jnp.split(mixing.astype(jnp.float32), 2, axis=-1)
    weights = nn.softmax(jnp.stack([ma, mb]), axis=0).astype(x.dtype)
    return a * weights[0] + b * weights[1]


class BasicBlock(nn.Module):
  """Two 3x3 convolutions (official `ResidualBlock`).

  Attributes:
    filters: output channels.
    strides: stride of the first convolution and of the shortcut.
    use_projection: whether the shortcut is a projection (first block).
    resnet_d: average-pool projection shortcut (on when sk_ratio > 0).
    conv: convolution constructor.
    norm: BatchNorm constructor.
  """
  filters: int
  strides: int
  use_projection: bool
  resnet_d: bool
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    shortcut = x
    if self.use_projection:
      shortcut = _projection_shortcut(x, self.filters, self.strides,
                                      self.resnet_d, self.conv, self.norm)
    y = _conv(self.conv, self.filters, CONV_KERNEL, self.strides, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = _conv(self.conv, self.filters, CONV_KERNEL, 1, "conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 (or selective kernel) -> 1x1 block (official `BottleneckBlock`).

  Attributes:
    filters: inner channels; the output has `EXPANSION` times as many.
    strides: stride of the 3x3 convolution and of the shortcut.
    use_projection: whether the shortcut is a projection (first block).
    sk_ratio: selective-kernel ratio; 0 = plain 3x3 convolution.
    sk_min_dim: lower bound of the selective-kernel mixing width.
    conv: convolution constructor.
    norm: BatchNorm constructor.
  """
  filters: int
  strides: int
  use_projection: bool
  sk_ratio: float
  sk_min_dim: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    out = EXPANSION * self.filters
    shortcut = x
    if self.use_projection:
      shortcut = _projection_shortcut(x, out, self.strides, self.sk_ratio > 0,
                                      self.conv, self.norm)
    y = _conv(self.conv, self.filters, 1, 1, "conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    if self.sk_ratio > 0:
      y = SelectiveKernelConv(self.filters, self.strides, self.sk_ratio,
                              self.sk_min_dim, self.conv, self.norm,
                              name="sk_conv")(y)
    else:
      y = _conv(self.conv, self.filters, CONV_KERNEL, self.strides, "conv2")(y)
      y = nn.relu(self.norm(name="bn2")(y))
    y = _conv(self.conv, out, 1, 1, "conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """The SimCLR encoder: stem, four stages, global average pool.

  Attributes:
    stage_sizes: blocks per stage (see `STAGE_SIZES`).
    bottleneck: bottleneck blocks (depth >= 50) instead of basic blocks.
    width: integer width multiplier.
    sk_ratio: selective-kernel ratio (0 = off; SimCLR v2 uses 0.0625).
    stem: 'cifar' (3x3 stride 1, no pool) or 'imagenet' (7x7/2 + 3x3/2 pool).
    bn_momentum: decay of the BatchNorm moving averages.
    bn_epsilon: BatchNorm epsilon.
    axis_name: mesh axis to average batch statistics over (global BN).
    dtype: compute dtype; parameters and statistics stay float32.
    base_widths: channels of each stage at width 1.
    sk_min_dim: lower bound of the selective-kernel mixing width.
  """
  stage_sizes: Sequence[int]
  bottleneck: bool
  width: int
  sk_ratio: float
  stem: str
  bn_momentum: float
  bn_epsilon: float
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  base_widths: Sequence[int] = BASE_WIDTHS
  sk_min_dim: int = SK_MIN_DIM

  @nn.compact
  def __call__(self, x, train: bool):
    """Encodes images.

    Args:
      x: images [B, H, W, C].
      train: use (and update) batch statistics instead of moving averages.

    Returns:
      The representation h [B, channels of the last stage], float32.
    """
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.lecun_normal())
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon,
                             axis_name=self.axis_name, dtype=self.dtype)
    x = x.astype(self.dtype)
    stem_width = self.base_widths[0] * self.width
    if self.stem == "cifar":
      x = _conv(conv, stem_width, CONV_KERNEL, 1, "stem_conv0")(x)
      x = nn.relu(norm(name="stem_bn0")(x))
    else:
      if self.sk_ratio > 0:  # ResNet-D deep stem
        widths = (stem_width // 2, stem_width // 2, stem_width)
        strides = (IMAGENET_STEM_STRIDE, 1, 1)
        for i, (w, s) in enumerate(zip(widths, strides)):
          x = _conv(conv, w, CONV_KERNEL, s, f"stem_conv{i}")(x)
          x = nn.relu(norm(name=f"stem_bn{i}")(x))
      else:
        x = _conv(conv, stem_width, IMAGENET_STEM_KERNEL, IMAGENET_STEM_STRIDE,
                  "stem_conv0")(x)
        x = nn.relu(norm(name="stem_bn0")(x))
      # TF 'SAME' max pooling pads with -inf, more after than before.
      x = nn.max_pool(x, (STEM_POOL_WINDOW, STEM_POOL_WINDOW),
                      strides=(STEM_POOL_STRIDE, STEM_POOL_STRIDE),
                      padding="SAME")
    for g, (blocks, base) in enumerate(zip(self.stage_sizes, self.base_widths)):
      for b in range(blocks):
        name = f"stage{g}_block{b}"
        strides = STAGE_STRIDES[g] if b == 0 else 1
        if self.bottleneck:
          block = BottleneckBlock(base * self.width, strides, b == 0,
                                  self.sk_ratio, self.sk_min_dim, conv, norm,
                                  name=name)
        else:
          block = BasicBlock(base * self.width, strides, b == 0,
                             self.sk_ratio > 0, conv, norm, name=name)
        x = block(x)
    return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
