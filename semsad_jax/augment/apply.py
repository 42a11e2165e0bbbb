"""Applying an :class:`AugmentSpec` on the device: one image, or a batch vmapped over per-example keys.

:func:`augment_batch` vmaps :func:`augment_image` over per-example keys ``fold_in(key, i)``, so example
``i``'s augmentation depends only on ``(key, i)``, whatever the batch sharding. The ops (and how they
relate to dm-pix) are in :mod:`semsad_jax.augment.ops`. Each image draws all its randomness as one
vector of uniforms, at fixed offsets per op, so that switching an op on or off never changes another
op's draws.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from semsad_jax.augment.ops import (
    UNIFORMS_PER_OP,
    blur_from_uniforms,
    crop_box_from_uniforms,
    flip_from_uniform,
    grayscale_from_uniform,
    jitter_from_uniforms,
    resized_crop,
)
from semsad_jax.augment.presets import AugmentSpec, get_spec
from semsad_jax.errors import SemsadError

__all__ = ["augment_batch", "augment_image", "to_float"]

_OFFSETS = {name: sum(list(UNIFORMS_PER_OP.values())[:i]) for i, name in enumerate(UNIFORMS_PER_OP)}


def to_float(images_uint8: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 [..., H, W, 3] in 0..255 -> ``dtype`` in [0, 1] (float input is only cast)."""
    images = jnp.asarray(images_uint8)
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(jnp.float32) / 255.0
    return images.astype(dtype)


def augment_image(key: jax.Array, image: jax.Array, spec: AugmentSpec | str) -> jax.Array:
    """Augment one image: [H, W, 3] uint8 (or float in [0, 1]) -> [H, W, 3] float32 in [0, 1]."""
    spec = get_spec(spec)
    x = to_float(image)
    if spec.is_identity:
        return x
    draws = jax.random.uniform(key, (sum(UNIFORMS_PER_OP.values()),))
    u = {name: draws[start : start + UNIFORMS_PER_OP[name]] for name, start in _OFFSETS.items()}
    if spec.crop_scale is not None:
        box = crop_box_from_uniforms(
            u["crop"], x.shape[0], x.shape[1], spec.crop_scale, spec.crop_ratio
        )
        x = resized_crop(x, box)
    if spec.flip_p > 0:
        x = flip_from_uniform(u["flip"][0], x, spec.flip_p)
    x = jitter_from_uniforms(u["jitter"], x, spec.jitter, spec.jitter_p)
    if spec.gray_p > 0:
        x = grayscale_from_uniform(u["gray"][0], x, spec.gray_p)
    if spec.blur_p > 0:
        x = blur_from_uniforms(u["blur"], x, spec.blur_sigma, spec.blur_p, spec.blur_kernel)
    return x


@functools.partial(jax.jit, static_argnames=("spec", "dtype"))
def augment_batch(
    key: jax.Array, images: jax.Array, spec: AugmentSpec | str, *, dtype: Any = jnp.float32
) -> jax.Array:
    """Augment a batch: uint8 [B, H, W, 3] -> ``dtype`` [B, H, W, 3] in [0, 1].

    Example ``i`` uses key ``fold_in(key, i)``, so its result depends only on (key, i), not on
    how the batch is sharded. Jitted with ``spec`` (preset name or AugmentSpec) and ``dtype`` static.
    """
    spec = get_spec(spec)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise SemsadError(f"augment_batch expects images [B, H, W, 3], got shape {images.shape}")
    if spec.is_identity:
        return to_float(images, dtype)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(images.shape[0]))
    augmented = jax.vmap(functools.partial(augment_image, spec=spec))(keys, images)
    return augmented.astype(dtype)
