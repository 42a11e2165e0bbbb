"""An encoder-shaped siamese discriminator (extension, ``discriminator.arch = "siamese"``).

The paper's s reads a pair stacked on channels with a 6-channel ResNet. This extension reads each
image of the pair with one shared 3-channel trunk (the encoder's architecture: ReLU ResNet of the
discriminator section's depth / width / norm, no head) and scores
``head([f, f', |f - f'|, f * f'])``, ``f = trunk(x)``, ``f' = trunk(x')``, with an MLP head in the
section's activation (ELU) to ``out_dim``. SemSAD's loss, pairs and score are unchanged; only the
function class differs. Its input is the same stacked ``[B, H, W, 6]`` pair, so every caller
(training step, bank, detector) is unchanged.

With ``discriminator.init_from_encoder`` the trunk starts from the trained encoder's trunk (its
convolutions, norms and running statistics, :func:`initialise_from_encoder`): what the encoder
learnt about meaning is where s starts, not something s must learn again from its pairs.
``discriminator.trunk_lr_scale`` (``semsad_jax.train.optim``) then fine-tunes it with a smaller
learning rate (0 freezes its parameters).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from semsad_jax.errors import SemsadError
from semsad_jax.models.conv import check_choice
from semsad_jax.models.resnet import ACTIVATIONS, ResNet, _linear, canonical_dtype

__all__ = ["ARCHS", "SiameseDiscriminator", "initialise_from_encoder"]

ARCHS = ("pair", "siamese")  # discriminator.arch: the paper's 6-channel ResNet, or this module


class SiameseDiscriminator(nnx.Module):
    """s(x, x') from one shared trunk: ``[B, H, W, 2C]`` (reference, partner) -> ``[B, out_dim]``.

    The trunk sees the B references and B partners as one batch of 2B images (BatchNorm statistics
    over both). ``features`` is not defined: the pair has no single feature vector.
    """

    def __init__(
        self,
        *,
        depth: int = 18,
        width: int = 64,
        norm: str = "batch",
        activation: str = "elu",
        out_dim: int = 1,
        dtype=jnp.float32,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        dtype = canonical_dtype(dtype)
        self.dtype = dtype
        self.activation = activation
        check_choice("activation", activation, tuple(ACTIVATIONS))
        self.trunk = ResNet(
            depth=depth,
            width=width,
            in_channels=3,
            activation="relu",
            norm=norm,
            head="none",
            dtype=dtype,
            conv_impl=conv_impl,
            rngs=rngs,
        )
        dim = self.trunk.feature_dim
        self.head_hidden = _linear(4 * dim, dim, dtype, rngs)
        self.head = _linear(dim, out_dim, dtype, rngs)

    def __call__(self, pairs: jax.Array) -> jax.Array:
        channels = pairs.shape[-1] // 2
        both = jnp.concatenate([pairs[..., :channels], pairs[..., channels:]], axis=0)
        f, f2 = jnp.split(self.trunk.features(both), 2)
        joint = jnp.concatenate([f, f2, jnp.abs(f - f2), f * f2], axis=-1).astype(self.dtype)
        hidden = ACTIVATIONS[self.activation](self.head_hidden(joint))
        return self.head(hidden).astype(jnp.float32)


def initialise_from_encoder(model: nnx.Module, encoder: tuple[Any, dict, dict]) -> nnx.Module:
    """``model`` (a :class:`SiameseDiscriminator`) with its trunk set to the encoder's trunk.

    ``encoder``: ``(graphdef, params, batch_stats)`` of the trained encoder. Every trunk variable
    (convolutions, norm scales and biases, running statistics) is copied; the encoder's head is
    not. SemsadError naming the keys when the two trunks differ in shape.
    """
    if not isinstance(model, SiameseDiscriminator):
        raise SemsadError(
            "discriminator.init_from_encoder needs discriminator.arch='siamese' (the paper's "
            "6-channel discriminator has no 3-channel trunk to start from)."
        )
    trained = nnx.merge(*encoder)
    if trained.stem_conv.strides != model.trunk.stem_conv.strides:
        raise SemsadError(
            "discriminator.init_from_encoder: the encoder has a stride-2 stem (encoder.stem_stride)"
            " and the siamese trunk has not; train the encoder with encoder.stem_stride=1."
        )
    source = nnx.to_pure_dict(nnx.state(trained))
    state = nnx.state(model.trunk)
    target = nnx.to_pure_dict(state)
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # nested dicts of shapes compare as wholes
    mismatched = [k for k in target if k not in source or shapes(source[k]) != shapes(target[k])]
    if mismatched:
        raise SemsadError(
            f"discriminator.init_from_encoder: the encoder's trunk differs from the "
            f"discriminator's at {', '.join(map(str, mismatched[:4]))}; give the discriminator "
            f"the encoder's depth, width and norm."
        )
    nnx.replace_by_pure_dict(state, {key: source[key] for key in target})
    nnx.update(model.trunk, state)
    return model
