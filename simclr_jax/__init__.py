"""simclr_jax: SimCLR (v1, v2) and supervised contrastive learning in JAX/Flax.

`simclr_jax.load_encoder(path)` loads an export for embedding images (see
`simclr_jax.api`); it is imported on first use, so `import simclr_jax` stays
cheap.
"""

__version__ = "0.1.0"
__all__ = ["load_encoder", "Encoder"]


def __getattr__(name):
  # Lazy: importing JAX and Flax only when the API is used.
  if name in __all__:
    from simclr_jax import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'simclr_jax' has no attribute {name!r}")
