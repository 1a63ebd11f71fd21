"""Test session set-up: 8 CPU devices and fast compiles, before jax is imported.

Every test sees 8 host devices; single-device references use a 1-device mesh.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # pylint: disable=g-import-not-at-top

# Compile time dominates the tiny test models on CPU.
jax.config.update("jax_disable_most_optimizations", True)
