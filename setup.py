"""Installs simclr_jax: SimCLR (v1, v2, SupCon) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="simclr_jax",
    version="0.1.0",
    description="SimCLR contrastive self-supervised learning in JAX/Flax.",
    packages=find_packages(include=["simclr_jax", "simclr_jax.*"]),
    python_requires=">=3.10",
    # Tested with jax 0.8.0 + flax 0.11.0 and jax 0.10.2 + flax 0.12.8 (what
    # pip serves for Python 3.11); the JAX APIs used were checked against
    # JAX's source after 0.11.0. jax 0.11+ needs Python 3.12+.
    install_requires=[
        "jax>=0.8,<0.13",
        "flax>=0.11,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "etils[epath]>=1.5",
        "tensorflow-cpu>=2.18,<2.22",
        "tensorflow-datasets>=4.9,<5",
        "ml-collections>=1.0,<2",
        "absl-py>=2.1",
        "clu>=0.0.12",
        "tensorboard>=2.18",
        "scikit-learn>=1.5",
        "threadpoolctl>=3.5",  # limits t-SNE threads (a scikit-learn dependency)
        "numpy>=1.26",
        "pillow>=10",
        "matplotlib>=3.8",
    ],
    extras_require={
        # tensorboardX: the writer fallback without clu is tested too.
        # onnx/onnxruntime: the ONNX export is verified by outputs; torch,
        # torchvision and safetensors, when installed, verify the PyTorch one.
        # pytest-xdist: the suite runs on two workers (pytest.ini).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "chex>=0.1.88",
                 "tensorboardX>=2.6",
                 "onnx>=1.16", "onnxruntime>=1.17",
                 # reads the --format=torch files back without torch
                 "safetensors>=0.4"],
        # launch/skimage_patches.py: the CPU study's second image set.
        "study": ["scikit-image>=0.22"],
        # python -m simclr_jax.export --format=onnx needs the onnx package.
        "onnx": ["onnx>=1.16"],
        # Accelerator builds of the same jax range: `pip install -e .[cuda13]`
        # resolves jax and its plugin together, within the bounds above.
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
    },
)
