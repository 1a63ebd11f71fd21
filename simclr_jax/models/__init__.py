"""Flax Linen models of official SimCLR: ResNet encoders and heads."""

from simclr_jax.models.heads import ProjectionHead, SupervisedHead
from simclr_jax.models.resnet import (BOTTLENECK_DEPTHS, STAGE_SIZES, ResNet,
                                      min_input_size)
from simclr_jax.models.simclr import (MODEL_KEYS, SimCLRModel, build_model,
                                      count_params, model_config,
                                      representation_dim,
                                      validate_model_config)

__all__ = [
    "BOTTLENECK_DEPTHS", "MODEL_KEYS", "STAGE_SIZES", "ProjectionHead", "ResNet",
    "SimCLRModel", "SupervisedHead", "build_model", "count_params",
    "min_input_size", "model_config", "representation_dim", "validate_model_config",
]
