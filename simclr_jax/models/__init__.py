"""Flax Linen models of official SimCLR: ResNet encoders and heads."""

from simclr_jax.models.heads import ProjectionHead, SupervisedHead
from simclr_jax.models.resnet import (BOTTLENECK_DEPTHS, STAGE_SIZES, ResNet,
                                      min_input_size)
from simclr_jax.models.simclr import (SimCLRModel, build_model, count_params,
                                      representation_dim,
                                      validate_model_config)

__all__ = [
    "BOTTLENECK_DEPTHS", "STAGE_SIZES", "ProjectionHead", "ResNet",
    "SimCLRModel", "SupervisedHead", "build_model", "count_params",
    "min_input_size", "representation_dim", "validate_model_config",
]
