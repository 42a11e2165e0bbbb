"""Shifting transformations: copies of an image that keep every pixel and break its layout.

The negatives of ``discriminator.shifted_negatives`` (:mod:`semsad_jax.method.pairs`): a rotation, a
permutation of its 2x2 or 4x4 grid of patches, or of its pixels (the shifting transformations of
CSI, Tack et al. 2020, and the statistics-keeping negatives of Rafiee et al. 2022). Every kind keeps
the colour histogram; the harder the shuffle, the less of the image's layout is left.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from semsad_jax.errors import SemsadError

__all__ = ["SHIFT_KINDS", "shift_images"]

# What a shifted negative does to the image (:func:`shift_images`); the first is the default.
SHIFT_KINDS = ("rotate_or_quadrants", "rotation", "patch4", "patch16", "pixels")

# The 23 non-identity permutations of the four quadrants of an image.
_QUADRANT_PERMUTATIONS = tuple(p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3))


def shift_images(key: jax.Array, images: jax.Array, kind: str = SHIFT_KINDS[0]) -> jax.Array:
    """A random shifting transformation of each image [B, H, W, C] (square images).

    Every pixel value is kept; only the layout changes. Per image, with ``kind``:

    * ``"rotate_or_quadrants"``: uniformly one of rotation by 90, 180 or 270 degrees, or a
      permutation of its four quadrants (uniform among the 23 non-identity ones; only for even H
      and W, else a rotation);
    * ``"rotation"``: rotation by 90, 180 or 270 degrees, uniformly;
    * ``"patch4"``: the 2x2 grid of patches permuted (one of the 23 non-identity permutations);
    * ``"patch16"``: the 4x4 grid of patches permuted (a uniform permutation of 16; H divisible
      by 4);
    * ``"pixels"``: every pixel (its C values together) moved by a uniform permutation of the
      H*W positions: only the colour histogram is left.
    """
    batch, height, width, channels = images.shape
    if height != width:
        raise SemsadError(f"shifted negatives need square images, got {height}x{width}.")
    if kind not in SHIFT_KINDS:
        raise SemsadError(f"unknown shifted_kind {kind!r}; use one of {', '.join(SHIFT_KINDS)}.")
    k_kind, k_perm = jax.random.split(key)
    if kind == "rotation":
        return _choose(k_kind, [jnp.rot90(images, r, axes=(1, 2)) for r in (1, 2, 3)])
    if kind == "patch4":
        return _permute_patches(k_perm, images, 2)
    if kind == "patch16":
        return _permute_patches(k_perm, images, 4)
    if kind == "pixels":
        keys = jax.random.split(k_perm, batch)
        order = jax.vmap(lambda k: jax.random.permutation(k, height * width))(keys)
        flat = images.reshape(batch, height * width, channels)
        return jnp.take_along_axis(flat, order[:, :, None], axis=1).reshape(images.shape)
    options = [jnp.rot90(images, r, axes=(1, 2)) for r in (1, 2, 3)]
    if height % 2 == 0:
        options.append(_permute_patches(k_perm, images, 2))
    return _choose(k_kind, options)


def _choose(key: jax.Array, options: list[jax.Array]) -> jax.Array:
    """Per image, one of ``options`` (each [B, ...]) uniformly."""
    kind = jax.random.randint(key, (options[0].shape[0],), 0, len(options))
    stacked = jnp.stack(options)  # [kinds, B, H, W, C]
    return jnp.take_along_axis(stacked, kind[None, :, None, None, None], axis=0)[0]


def _permute_patches(key: jax.Array, images: jax.Array, grid: int) -> jax.Array:
    """The ``grid`` x ``grid`` patches of each image permuted: for grid 2 one of the 23
    non-identity permutations, else a uniform permutation of grid**2 (H divisible by grid)."""
    batch, height, width, channels = images.shape
    if height % grid:
        raise SemsadError(
            f"a {grid}x{grid} patch permutation needs a side divisible by {grid}, got {height}; "
            f"set data.image_size to a multiple of {grid} or another discriminator.shifted_kind."
        )
    count = grid * grid
    if grid == 2:
        table = jnp.asarray(_QUADRANT_PERMUTATIONS, jnp.int32)
        perm = table[jax.random.randint(key, (batch,), 0, len(_QUADRANT_PERMUTATIONS))]
    else:
        keys = jax.random.split(key, batch)
        perm = jax.vmap(lambda k: jax.random.permutation(k, count))(keys)
    h, w = height // grid, width // grid
    patches = images.reshape(batch, grid, h, grid, w, channels).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, count, h, w, channels)
    patches = jnp.take_along_axis(patches, perm[:, :, None, None, None], axis=1)
    patches = patches.reshape(batch, grid, grid, h, w, channels).transpose(0, 1, 3, 2, 4, 5)
    return patches.reshape(images.shape)
