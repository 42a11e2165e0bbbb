"""The networks: CIFAR ResNets in Flax NNX (:mod:`.resnet`) and their construction from config (:mod:`.build`)."""

from semsad_jax.models.build import (
    ARCH_KEYS,
    build,
    compute_dtype,
    make_discriminator,
    make_encoder,
    model_stats,
    split_model,
)
from semsad_jax.models.conv import Conv, use_matmul_conv
from semsad_jax.models.resnet import ResNet, count_params

__all__ = [
    "ARCH_KEYS",
    "Conv",
    "ResNet",
    "build",
    "compute_dtype",
    "count_params",
    "make_discriminator",
    "make_encoder",
    "model_stats",
    "split_model",
    "use_matmul_conv",
]
