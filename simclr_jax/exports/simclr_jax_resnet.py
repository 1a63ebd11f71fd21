"""SimCLR ResNet encoder and projection head in PyTorch (written by simclr_jax).

This file needs torch only. It rebuilds the architecture recorded in the
metadata of a `.safetensors` file written by
`python -m simclr_jax.export --format=torch` and loads the weights strictly:

  import simclr_jax_resnet
  model = simclr_jax_resnet.load("encoder.safetensors")  # eval mode
  out = model(images)  # NCHW float32 RGB in [0, 1]; out["h"], out["z"]
  print(model.preprocessing)  # image size, centre crop, range, layout

It computes what the JAX model computes: symmetric padding of every
convolution, TF 'SAME' max-pooling in the ImageNet stem (the extra padding
after, not before, unlike torchvision's padding=1), the projection shortcut
of the first stage, ResNet-D shortcuts and the deep stem with selective
kernels, BatchNorm with the recorded epsilon.
"""
# simclr_jax_resnet module file, version 1 (this line marks the file as ours)

import json
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = {"F32": torch.float32, "I64": torch.int64}
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor],
                                         Dict[str, str]]:
  """Reads a safetensors file (no pickle): (tensors, string metadata)."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(size))
    data = bytearray(f.read())
  meta = header.pop("__metadata__", {})
  tensors = {}
  for name, info in header.items():
    begin, end = info["data_offsets"]
    dtype = _DTYPES[info["dtype"]]
    count = (end - begin) // torch.empty((), dtype=dtype).element_size()
    tensors[name] = torch.frombuffer(data, dtype=dtype, count=count,
                                     offset=begin).reshape(info["shape"])
  return tensors, meta


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
  # Odd kernels: the official fixed padding is (k - 1) // 2 on every side.
  return nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, bias=False)


def max_pool_same(x: torch.Tensor, window: int = 3,
                  stride: int = 2) -> torch.Tensor:
  """TF 'SAME' max-pooling: output ceil(n / stride), extra padding after."""
  pads = []
  for n in (x.shape[-1], x.shape[-2]):
    total = max((math.ceil(n / stride) - 1) * stride + window - n, 0)
    pads += [total // 2, total - total // 2]
  return F.max_pool2d(F.pad(x, pads, value=float("-inf")), window, stride)


class Downsample(nn.Sequential):
  """Projection shortcut (conv, bn); ResNet-D average-pools first."""

  def __init__(self, cin: int, cout: int, stride: int, resnet_d: bool,
               eps: float):
    super().__init__(_conv(cin, cout, 1, 1 if resnet_d else stride),
                     nn.BatchNorm2d(cout, eps=eps))
    self.stride, self.resnet_d = stride, resnet_d

  def forward(self, x):
    if self.resnet_d:
      padded = F.pad(x, (0, 1, 0, 1))
      if self.stride > 1:  # zero padding counted in the mean
        x = F.avg_pool2d(padded, 2, self.stride)
      else:  # TF 'SAME': padded cells left out of the mean
        ones = F.pad(torch.ones_like(x[:1, :1]), (0, 1, 0, 1))
        x = F.avg_pool2d(padded, 2, 1) / F.avg_pool2d(ones, 2, 1)
    return super().forward(x)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions."""

  def __init__(self, cin, filters, stride, projection, resnet_d, eps):
    super().__init__()
    self.conv1 = _conv(cin, filters, 3, stride)
    self.bn1 = nn.BatchNorm2d(filters, eps=eps)
    self.conv2 = _conv(filters, filters, 3)
    self.bn2 = nn.BatchNorm2d(filters, eps=eps)
    self.downsample = (Downsample(cin, filters, stride, resnet_d, eps)
                       if projection else None)
    self.out_channels = filters

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (or two-branch selective kernel) -> 1x1."""

  def __init__(self, cin, filters, stride, projection, sk_ratio, sk_min_dim,
               eps):
    super().__init__()
    out = EXPANSION * filters
    self.sk = sk_ratio > 0
    self.conv1 = _conv(cin, filters, 1)
    self.bn1 = nn.BatchNorm2d(filters, eps=eps)
    branches = 2 if self.sk else 1
    self.conv2 = _conv(filters, branches * filters, 3, stride)
    self.bn2 = nn.BatchNorm2d(branches * filters, eps=eps)
    if self.sk:
      mid = max(int(filters * sk_ratio), sk_min_dim)
      self.sk_fc1 = nn.Conv2d(filters, mid, 1, bias=False)
      self.sk_bn = nn.BatchNorm2d(mid, eps=eps)
      self.sk_fc2 = nn.Conv2d(mid, 2 * filters, 1, bias=False)
    self.conv3 = _conv(filters, out, 1)
    self.bn3 = nn.BatchNorm2d(out, eps=eps)
    self.downsample = (Downsample(cin, out, stride, self.sk, eps)
                       if projection else None)
    self.out_channels = out

  def forward(self, x):
    shortcut = x if self.downsample is None else self.downsample(x)
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    if self.sk:
      a, b = y.chunk(2, dim=1)
      g = (a + b).mean(dim=(2, 3), keepdim=True)
      g = self.sk_fc2(F.relu(self.sk_bn(self.sk_fc1(g))))
      w = torch.stack(g.chunk(2, dim=1)).softmax(dim=0)
      y = a * w[0] + b * w[1]
    return F.relu(self.bn3(self.conv3(y)) + shortcut)


class HeadLayer(nn.Module):
  """Bias-free linear layer, BatchNorm, ReLU (not on the last layer)."""

  def __init__(self, cin: int, cout: int, relu: bool, eps: float):
    super().__init__()
    self.linear = nn.Linear(cin, cout, bias=False)
    self.bn = nn.BatchNorm1d(cout, eps=eps)
    self.relu = relu

  def forward(self, x):
    x = self.bn(self.linear(x))
    return F.relu(x) if self.relu else x


class SimCLRResNet(nn.Module):
  """The encoder f, projection head g and supervised head of an export.

  forward(images) returns {'h': [B, h_dim], 'z': last head layer (when the
  model has a head), 'logits' (when it has a supervised head)}.
  """

  def __init__(self, arch: Dict):
    super().__init__()
    self.arch = dict(arch)
    eps, width, sk = arch["bn_epsilon"], arch["width"], arch["sk_ratio"]
    stem = arch["base_widths"][0] * width
    self.cifar = arch["stem"] == "cifar"
    self.deep_stem = not self.cifar and sk > 0
    if self.deep_stem:
      widths = (stem // 2, stem // 2, stem)
      self.conv1 = nn.ModuleList(
          [_conv(c, w, 3, 2 if i == 0 else 1)
           for i, (c, w) in enumerate(zip((3,) + widths[:2], widths))])
      self.bn1 = nn.ModuleList([nn.BatchNorm2d(w, eps=eps) for w in widths])
    else:
      self.conv1 = _conv(3, stem, 3 if self.cifar else 7, 1 if self.cifar
                         else 2)
      self.bn1 = nn.BatchNorm2d(stem, eps=eps)
    cin = stem
    for i, (blocks, base) in enumerate(zip(arch["stage_sizes"],
                                           arch["base_widths"])):
      layer = []
      for b in range(blocks):
        stride = STAGE_STRIDES[i] if b == 0 else 1
        if arch["bottleneck"]:
          block = Bottleneck(cin, base * width, stride, b == 0, sk,
                             arch["sk_min_dim"], eps)
        else:
          block = BasicBlock(cin, base * width, stride, b == 0, sk > 0, eps)
        layer.append(block)
        cin = block.out_channels
      setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
    self.num_stages = len(arch["stage_sizes"])
    dims = [arch["h_dim"]] + list(arch["head_dims"])
    self.head = nn.ModuleList(
        [HeadLayer(dims[k], dims[k + 1], k < len(dims) - 2, eps)
         for k in range(len(dims) - 1)])
    self.fc = None
    if arch["num_classes"] > 0:
      self.fc = nn.Linear(dims[arch["sup_head_from"]], arch["num_classes"])
      if arch["sup_head_from"] > 0:  # stored under its own name
        self.sup_head, self.fc = self.fc, None
    self.preprocessing = {}

  def encode(self, x: torch.Tensor) -> torch.Tensor:
    """The representation h of images x (NCHW float32 in [0, 1])."""
    if self.deep_stem:
      for conv, bn in zip(self.conv1, self.bn1):
        x = F.relu(bn(conv(x)))
    else:
      x = F.relu(self.bn1(self.conv1(x)))
    if not self.cifar:
      x = max_pool_same(x)
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return x.mean(dim=(2, 3))

  def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    h = self.encode(x)
    feats = [h]
    for layer in self.head:
      feats.append(layer(feats[-1]))
    out = {"h": h}
    if len(self.head):
      out["z"] = feats[-1]
    sup = self.fc if self.fc is not None else getattr(self, "sup_head", None)
    if sup is not None:
      out["logits"] = sup(feats[self.arch["sup_head_from"]])
    return out


def load(path: str, device: str = "cpu") -> SimCLRResNet:
  """Builds the model of a simclr_jax .safetensors file and loads it strictly.

  Args:
    path: the .safetensors file.
    device: where to put the model.

  Returns:
    The model in eval mode, with `.preprocessing` (the input convention).
  """
  tensors, meta = read_safetensors(path)
  model = SimCLRResNet(json.loads(meta["architecture"]))
  model.load_state_dict(tensors, strict=True)
  model.preprocessing = json.loads(meta["preprocessing"])
  return model.to(device).eval()
