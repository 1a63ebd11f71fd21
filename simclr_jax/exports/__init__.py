"""The encoder outside JAX: ONNX graphs and PyTorch weights of an export.

`layout` turns Flax variables into PyTorch's layout (torchvision's key names
where the architecture has them) and describes the architecture; `onnx`
writes an ONNX graph from that layout, `pytorch` a safetensors file and the
self-contained module `simclr_jax_resnet.py` that reads it. Both writers
replace only files they wrote themselves, atomically.
"""
