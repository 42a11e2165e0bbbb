"""The two networks of SemSAD built from their config sections, and their (graphdef, state) split.

``build("encoder", config.encoder, seed=..., dtype=...)`` gives h: a 3-channel ReLU ResNet.
``build("discriminator", config.discriminator, ...)`` gives s: a 6-channel ResNet (the two images of
a pair stacked on channels) with the section's activation (ELU by default). The discriminator's
parameters are drawn from ``seed + 1`` so that h and s never start from the same random stream.

Models travel through jit, Orbax and the device mesh as ``(graphdef, params, batch_stats)``:
:func:`split_model` and ``nnx.merge`` convert between the two forms.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from semsad_jax.errors import SemsadError
from semsad_jax.models.conv import check_choice
from semsad_jax.models.resnet import ResNet, canonical_dtype
from semsad_jax.models.siamese import ARCHS, SiameseDiscriminator

__all__ = [
    "ARCH_KEYS",
    "KINDS",
    "build",
    "compute_dtype",
    "make_discriminator",
    "make_encoder",
    "make_rotation_net",
    "model_stats",
    "split_model",
]

KINDS = ("encoder", "discriminator", "rotation")
# The config keys that fix a network's parameter tree (conv_impl only chooses how it is computed).
ARCH_KEYS = {
    "encoder": ("depth", "width", "norm", "head", "out_dim", "shifted_instances"),
    "discriminator": ("depth", "width", "activation", "norm", "out_dim", "head", "arch"),
    "rotation": ("depth", "width", "norm", "transforms"),
}
_SEED_OFFSET = {"encoder": 0, "discriminator": 1, "rotation": 2}
# Classes of the encoder's auxiliary head with ``encoder.shifted_instances`` (the four rotations).
SHIFTED_INSTANCES = 4
# Classes of the rotation network per ``rotation.transforms`` (semsad_jax.method.transforms, which
# models may not import, lists the transformations themselves; a test keeps the two equal).
TRANSFORM_CLASSES = {"rotate": 4, "rotate_flip": 8, "geom": 72}


def compute_dtype(name: Any) -> jnp.dtype:
    """The compute dtype named by ``config.dtype`` ("float32" or "bfloat16"); SemsadError otherwise."""
    return canonical_dtype(name)


def _resnet(
    section: Any, in_channels: int, activation: str, rngs: nnx.Rngs, dtype: Any, **kw: Any
) -> ResNet:
    options = dict(head=getattr(section, "head", None), out_dim=getattr(section, "out_dim", None))
    options.update(kw)
    return ResNet(
        depth=section.depth,
        width=section.width,
        in_channels=in_channels,
        activation=activation,
        norm=section.norm,
        dtype=dtype,
        conv_impl=section.conv_impl,
        stem_stride=getattr(section, "stem_stride", 1),
        rngs=rngs,
        **options,
    )


def make_encoder(section: Any, *, rngs: nnx.Rngs, dtype: Any = jnp.float32) -> ResNet:
    """Encoder h from its config section (depth, width, norm, head, out_dim, conv_impl and
    stem_stride, absent = 1); 3 channels, ReLU. With ``shifted_instances`` (absent = False) it also
    has the auxiliary rotation head (:meth:`ResNet.aux`, 4 classes)."""
    aux = SHIFTED_INSTANCES if getattr(section, "shifted_instances", False) else 0
    return _resnet(section, 3, "relu", rngs, dtype, aux_out=aux)


def make_rotation_net(section: Any, *, rngs: nnx.Rngs, dtype: Any = jnp.float32) -> ResNet:
    """The transformation classifier of the ``rotation`` section: a 3-channel ReLU ResNet (depth,
    width, norm, conv_impl) with a linear head to the number of ``transforms``."""
    kind = section.transforms
    if kind not in TRANSFORM_CLASSES:
        raise SemsadError(
            f"unknown rotation.transforms {kind!r}; use one of {', '.join(TRANSFORM_CLASSES)}."
        )
    out = TRANSFORM_CLASSES[kind]
    return _resnet(section, 3, "relu", rngs, dtype, head="linear", out_dim=out)


def make_discriminator(
    section: Any, *, rngs: nnx.Rngs, dtype: Any = jnp.float32
) -> ResNet | SiameseDiscriminator:
    """Pair discriminator s from its config section: 6 input channels (reference, partner).

    Reads depth, width, activation, norm, head, out_dim (1, or the authors' 64) and conv_impl;
    ``arch`` (absent = "pair", the paper's 6-channel ResNet) "siamese" builds the extension
    :class:`~semsad_jax.models.siamese.SiameseDiscriminator` (its head is always the MLP).
    """
    arch = getattr(section, "arch", "pair")
    check_choice("arch", arch, ARCHS)
    if arch == "siamese":
        return SiameseDiscriminator(
            depth=section.depth,
            width=section.width,
            norm=section.norm,
            activation=section.activation,
            out_dim=section.out_dim,
            dtype=dtype,
            conv_impl=section.conv_impl,
            rngs=rngs,
        )
    return _resnet(section, 6, section.activation, rngs, dtype)


def build(
    kind: str, section: Any, *, seed: int, dtype: Any = "float32"
) -> ResNet | SiameseDiscriminator:
    """The ``kind`` network ("encoder", "discriminator" or "rotation") of ``section`` with fresh
    parameters."""
    if kind not in KINDS:
        raise SemsadError(f"unknown network {kind!r}; use one of {', '.join(KINDS)}.")
    make = {"encoder": make_encoder, "discriminator": make_discriminator}.get(
        kind, make_rotation_net
    )
    rngs = nnx.Rngs(int(seed) + _SEED_OFFSET[kind])
    return make(section, rngs=rngs, dtype=compute_dtype(dtype))


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params pure dict, batch_stats pure dict) of an NNX model."""
    graphdef, params, stats = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def model_stats(model: nnx.Module) -> dict:
    """The non-parameter state (BatchNorm running statistics) of ``model`` as a pure dict."""
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])
