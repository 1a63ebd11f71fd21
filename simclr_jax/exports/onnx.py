"""The encoder as an ONNX graph: input `images`, outputs `h` and `z`.

The graph is written node by node from the PyTorch layout (`layout`), with
the ops the architecture needs and nothing traced: Conv with the explicit
symmetric padding of the official code, BatchNormalization in inference
form, Relu, MaxPool with TF 'SAME' padding (`auto_pad=SAME_UPPER`, extra
cell after), AveragePool for the ResNet-D shortcuts, and the selective-kernel
mixing (Split, GlobalAveragePool, Softmax across the two branches). The
batch and the image side are dynamic; the input is NCHW float32 in [0, 1].
The preprocessing, architecture and source are in the model's metadata.

Only the `onnx` package is needed to write it (`pip install onnx`);
`onnxruntime` runs it.

Why not a tracing exporter: jax2onnx (0.17, the maintained JAX -> ONNX
converter) pins orbax-checkpoint below 0.11.37 and brings equinox, dm-pix,
huggingface_hub and netron with it; jax2tf + tf2onnx needs TensorFlow at
export time, which this library keeps to tf.data pipelines, and tf2onnx is
not served for this Python and TensorFlow. The network needs a dozen ONNX
ops, each the exact counterpart of one Flax op, so the graph is written
directly and verified by outputs (tests/test_exports.py).
"""

import json
import time
from typing import Any, Dict, List

import numpy as np

from simclr_jax import config as config_lib
from simclr_jax.exports import layout
from simclr_jax.models import resnet as resnet_lib

FORMAT = "simclr_jax.onnx/1"
OPSET = 17
INPUT = "images"
# A protobuf holds at most 2 GiB.
MAX_BYTES = 2 ** 31 - 2 ** 24


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    config_lib.fail("--format", "onnx", "needs the onnx package: pip install "
                    "onnx (and onnxruntime to run the graph)")
  return onnx


class _Graph:
  """Collects nodes and initializers with unique names."""

  def __init__(self, onnx, weights: Dict[str, np.ndarray], eps: float):
    self.onnx, self.weights, self.eps = onnx, weights, eps
    self.nodes: List[Any] = []
    self.inits: List[Any] = []
    self.count = 0

  def const(self, name: str, value: np.ndarray) -> str:
    self.inits.append(self.onnx.numpy_helper.from_array(value, name))
    return name

  def param(self, key: str) -> str:
    return self.const(key, np.ascontiguousarray(self.weights[key]))

  def op(self, op_type: str, inputs: List[str], n_out: int = 1, **attrs):
    self.count += 1
    outs = [f"{op_type.lower()}_{self.count}" + (f"_{i}" if n_out > 1 else "")
            for i in range(n_out)]
    self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs,
                                                 **attrs))
    return outs[0] if n_out == 1 else outs

  def conv(self, x: str, key: str, stride: int = 1) -> str:
    k = self.weights[key + ".weight"].shape[-1]
    (before, after), _ = resnet_lib.fixed_padding(k)
    return self.op("Conv", [x, self.param(key + ".weight")],
                   kernel_shape=[k, k], strides=[stride, stride],
                   pads=[before, before, after, after])

  def bn(self, x: str, key: str, relu: bool = False) -> str:
    y = self.op("BatchNormalization",
                [x] + [self.param(f"{key}.{n}") for n in
                       ("weight", "bias", "running_mean", "running_var")],
                epsilon=self.eps)
    return self.op("Relu", [y]) if relu else y

  def split2(self, x: str, channels: int, axis: int) -> List[str]:
    self.count += 1
    sizes = self.const(f"split_{self.count}", np.array([channels, channels],
                                                       np.int64))
    return self.op("Split", [x, sizes], n_out=2, axis=axis)


def _shortcut(g: _Graph, x: str, key: str, stride: int, resnet_d: bool
              ) -> str:
  if resnet_d:
    pool = resnet_lib.RESNET_D_POOL
    (before, after), _ = resnet_lib.fixed_padding(pool)
    # stride 2: zero padding counted in the mean (official pad + VALID);
    # stride 1: TF 'SAME', padded cells left out of the mean.
    x = g.op("AveragePool", [x], kernel_shape=[pool, pool],
             strides=[stride, stride], pads=[before, before, after, after],
             count_include_pad=int(stride > 1))
    return g.bn(g.conv(x, key + ".0"), key + ".1")
  return g.bn(g.conv(x, key + ".0", stride), key + ".1")


def _sk_conv(g: _Graph, x: str, key: str, filters: int, stride: int) -> str:
  y = g.bn(g.conv(x, key + ".conv2", stride), key + ".bn2", relu=True)
  a, b = g.split2(y, filters, axis=1)
  pooled = g.op("GlobalAveragePool", [g.op("Add", [a, b])])
  mix = g.bn(g.conv(pooled, key + ".sk_fc1"), key + ".sk_bn", relu=True)
  ma, mb = g.split2(g.conv(mix, key + ".sk_fc2"), filters, axis=1)
  axes = g.const(f"axes0_{g.count}", np.array([0], np.int64))
  stacked = g.op("Concat", [g.op("Unsqueeze", [ma, axes]),
                            g.op("Unsqueeze", [mb, axes])], axis=0)
  wa, wb = g.split2(g.op("Softmax", [stacked], axis=0), 1, axis=0)
  return g.op("Add", [g.op("Mul", [a, g.op("Squeeze", [wa, axes])]),
                      g.op("Mul", [b, g.op("Squeeze", [wb, axes])])])


def _encoder(g: _Graph, arch: Dict[str, Any]) -> str:
  x = INPUT
  if arch["stem"] == "cifar":
    x = g.bn(g.conv(x, "conv1"), "bn1", relu=True)
  else:
    if layout.deep_stem(arch):
      for i in range(3):
        x = g.bn(g.conv(x, f"conv1.{i}", 2 if i == 0 else 1), f"bn1.{i}",
                 relu=True)
    else:
      x = g.bn(g.conv(x, "conv1", resnet_lib.IMAGENET_STEM_STRIDE), "bn1",
               relu=True)
    w, s = resnet_lib.STEM_POOL_WINDOW, resnet_lib.STEM_POOL_STRIDE
    x = g.op("MaxPool", [x], kernel_shape=[w, w], strides=[s, s],
             auto_pad="SAME_UPPER")
  sk = arch["sk_ratio"] > 0
  for i, (blocks, base) in enumerate(zip(arch["stage_sizes"],
                                         arch["base_widths"])):
    filters = base * arch["width"]
    for b in range(blocks):
      key = f"layer{i + 1}.{b}"
      stride = resnet_lib.STAGE_STRIDES[i] if b == 0 else 1
      shortcut = x
      if b == 0:
        shortcut = _shortcut(g, x, key + ".downsample", stride, sk)
      if arch["bottleneck"]:
        y = g.bn(g.conv(x, key + ".conv1"), key + ".bn1", relu=True)
        if sk:
          y = _sk_conv(g, y, key, filters, stride)
        else:
          y = g.bn(g.conv(y, key + ".conv2", stride), key + ".bn2", relu=True)
        y = g.bn(g.conv(y, key + ".conv3"), key + ".bn3")
      else:
        y = g.bn(g.conv(x, key + ".conv1", stride), key + ".bn1", relu=True)
        y = g.bn(g.conv(y, key + ".conv2"), key + ".bn2")
      x = g.op("Relu", [g.op("Add", [y, shortcut])])
  return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)


def build(variables: Dict[str, Any], arch: Dict[str, Any],
          meta: Dict[str, str]) -> Any:
  """The ONNX ModelProto of the encoder and projection head.

  Args:
    variables: {'params', 'batch_stats'} of the SimCLR model.
    arch: `layout.architecture(...)`.
    meta: string metadata stored in the model.

  Returns:
    An onnx.ModelProto (checked) with input `images` [batch, 3, height,
    width] and outputs `h` [batch, h_dim] and, with a head, `z`.
  """
  onnx = _onnx()
  weights = layout.torch_state_dict(variables, arch)
  g = _Graph(onnx, weights, arch["bn_epsilon"])
  h = g.op("Identity", [_encoder(g, arch)])
  outputs = [("h", h, arch["h_dim"])]
  x = h
  for k, dim in enumerate(arch["head_dims"]):
    x = g.op("Gemm", [x, g.param(f"head.{k}.linear.weight")], transB=1)
    x = g.bn(x, f"head.{k}.bn", relu=k < len(arch["head_dims"]) - 1)
  if arch["head_dims"]:
    outputs.append(("z", x, arch["head_dims"][-1]))
  # Rename the output tensors to their public names.
  for name, tensor, _ in outputs:
    for node in g.nodes:
      node.output[:] = [name if o == tensor else o for o in node.output]
      node.input[:] = [name if i == tensor else i for i in node.input]
  f32 = onnx.TensorProto.FLOAT
  graph = onnx.helper.make_graph(
      g.nodes, "simclr_jax_encoder",
      [onnx.helper.make_tensor_value_info(INPUT, f32,
                                          ["batch", 3, "height", "width"])],
      [onnx.helper.make_tensor_value_info(n, f32, ["batch", d])
       for n, _, d in outputs], g.inits)
  model = onnx.helper.make_model(
      graph, producer_name="simclr_jax",
      opset_imports=[onnx.helper.make_opsetid("", OPSET)],
      doc_string="SimCLR encoder: images (NCHW float32 RGB in [0, 1]) -> h, z")
  model.ir_version = 8  # readable by onnxruntime >= 1.10
  onnx.helper.set_model_props(model, meta)
  if model.ByteSize() > MAX_BYTES:
    config_lib.fail("--format", "onnx", "the model is over ONNX's 2 GiB "
                    "protobuf limit; use --format=torch")
  onnx.checker.check_model(model)
  return model


def read_meta(path: str) -> Dict[str, str]:
  """The metadata of an ONNX file (ValueError if it is not ours)."""
  onnx = _onnx()
  model = onnx.load(path, load_external_data=False)
  meta = {p.key: p.value for p in model.metadata_props}
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path} is not an ONNX export of simclr_jax")
  return meta


def _is_ours(path: str) -> bool:
  try:
    read_meta(path)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def write(out: str, variables: Dict[str, Any], model_cfg: Dict[str, Any],
          num_classes: int, preprocessing: Dict[str, Any],
          source: Dict[str, Any]) -> Dict[str, Any]:
  """Writes the ONNX file `out` (replacing only an ONNX export of ours).

  Returns:
    {'meta': the metadata, 'bytes': file size, 'seconds': time to write}.
  """
  layout.check_out_file(out, ".onnx", _is_ours)
  onnx = _onnx()
  start = time.time()
  arch = layout.architecture(model_cfg, num_classes)
  meta = layout.metadata(arch, preprocessing, source, FORMAT)
  model = build(variables, arch, meta)
  layout.write_atomic(out, lambda tmp: onnx.save_model(model, tmp))
  return {"meta": meta, "bytes": model.ByteSize(),
          "seconds": time.time() - start, "outputs": json.dumps(
              [o.name for o in model.graph.output])}
