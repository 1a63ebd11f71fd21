"""What an export is, and the encoder outside JAX: ONNX graphs and PyTorch
weights of an export.

`format` writes and reads an export (meta.json, variables, the evaluation
preprocessing); `files` says which files under an export folder are its own,
so that replacing one removes only those.

`layout` turns Flax variables into PyTorch's layout (torchvision's key names
where the architecture has them) and describes the architecture; `onnx`
writes an ONNX graph from that layout, `pytorch` a safetensors file and the
self-contained module `simclr_jax_resnet.py` that reads it. Both writers
replace only files they wrote themselves, atomically.
"""
