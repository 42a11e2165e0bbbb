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
from semsad_jax.models.siamese import SiameseDiscriminator, initialise_from_encoder

__all__ = [
    "ARCH_KEYS",
    "Conv",
    "ResNet",
    "SiameseDiscriminator",
    "build",
    "compute_dtype",
    "count_params",
    "initialise_from_encoder",
    "make_discriminator",
    "make_encoder",
    "model_stats",
    "split_model",
    "use_matmul_conv",
]
