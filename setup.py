"""Installs simclr_jax: SimCLR (v1, v2, SupCon) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="simclr_jax",
    version="0.1.0",
    description="SimCLR contrastive self-supervised learning in JAX/Flax.",
    packages=find_packages(include=["simclr_jax", "simclr_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.8,<0.11",
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
    extras_require={"test": ["pytest>=8", "chex>=0.1.88"]},
)
