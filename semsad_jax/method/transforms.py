"""Geometric transformation prediction: the transformations, the loss and the score.

The label-free detector of Hendrycks et al. 2019 ("Using self-supervised learning can improve model
robustness and uncertainty", four rotations) and of GEOM (Golan & El-Yaniv 2018, rotations x
horizontal flips x translations): a classifier learns which transformation was applied to a
training image; an image's score is the mean log-probability of the true transformation over all
its transformed copies (higher = more in-distribution). The same rotations are CSI's shifted
instances in the encoder (Tack et al. 2020, :mod:`semsad_jax.train.encoder`).

Transformation sets (``kind``), transformation ``t`` = index into :func:`transform_list`:

* ``"rotate"``: rotation by 0, 90, 180, 270 degrees (4);
* ``"rotate_flip"``: the four rotations of the image and of its mirror image (8);
* ``"geom"``: GEOM's 72: mirror (2) x horizontal shift (3) x vertical shift (3) x rotation (4); a
  shift moves the image by a quarter of its side (8 px at 32 px), reflecting at the border.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from semsad_jax.errors import SemsadError

__all__ = [
    "TRANSFORM_KINDS",
    "Transform",
    "all_transforms",
    "num_transforms",
    "transform_images",
    "transform_list",
    "transform_log_likelihood",
    "transform_loss",
]

TRANSFORM_KINDS = ("rotate", "rotate_flip", "geom")


class Transform(NamedTuple):
    """One transformation: mirror first, then shift (dx, dy in {-1, 0, 1} quarter sides), then
    rotate by ``quarter_turns`` x 90 degrees (``jnp.rot90`` over height and width)."""

    flip: bool
    dx: int
    dy: int
    quarter_turns: int


def transform_list(kind: str) -> tuple[Transform, ...]:
    """The transformations of ``kind``, in label order (the identity is label 0)."""
    if kind not in TRANSFORM_KINDS:
        raise SemsadError(
            f"unknown rotation.transforms {kind!r}; use one of {', '.join(TRANSFORM_KINDS)}."
        )
    flips = (False, True) if kind in ("rotate_flip", "geom") else (False,)
    shifts = (0, -1, 1) if kind == "geom" else (0,)
    return tuple(
        Transform(f, dx, dy, r)
        for f, dx, dy, r in itertools.product(flips, shifts, shifts, range(4))
    )


def num_transforms(kind: str) -> int:
    """How many transformations (= classes of the transformation classifier) ``kind`` has."""
    return len(transform_list(kind))


def _shift(images: jax.Array, dx: int, dy: int) -> jax.Array:
    """Moves [B, H, W, C] images by (dx, dy) quarter sides, reflecting at the border."""
    if not (dx or dy):
        return images
    _, height, width, _ = images.shape
    sy, sx = abs(dy) * (height // 4), abs(dx) * (width // 4)
    padded = jnp.pad(images, ((0, 0), (sy, sy), (sx, sx), (0, 0)), mode="reflect")
    top = sy - dy * (height // 4)
    left = sx - dx * (width // 4)
    return padded[:, top : top + height, left : left + width]


def transform_images(images: jax.Array, t: Transform) -> jax.Array:
    """``t`` applied to every image of [B, H, W, C] (square images, any dtype)."""
    y = images[:, :, ::-1] if t.flip else images
    y = _shift(y, t.dx, t.dy)
    return jnp.rot90(y, t.quarter_turns, axes=(1, 2)) if t.quarter_turns else y


def all_transforms(images: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
    """Every transformation of ``kind`` of every image: ([T * B, H, W, C], labels int32 [T * B]).

    Transformation-major: rows ``t * B .. (t + 1) * B - 1`` hold transformation ``t`` of the B
    images, in their order.
    """
    batch, height, width, _ = images.shape
    if height != width:
        raise SemsadError(f"transformation prediction needs square images, got {height}x{width}.")
    transforms = transform_list(kind)
    out = jnp.concatenate([transform_images(images, t) for t in transforms])
    labels = jnp.repeat(jnp.arange(len(transforms), dtype=jnp.int32), batch)
    return out, labels


def transform_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, accuracy) of logits [N, T] against transformation labels [N]."""
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, accuracy


def transform_log_likelihood(logits: jax.Array, num: int) -> jax.Array:
    """The score of B images from the logits [T * B, T] of their :func:`all_transforms` copies:
    the mean over t of log p(t | t(x)), float32 [B]; higher = more in-distribution."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = logp.reshape(num, -1, num)  # [t, b, class]
    return jnp.mean(jnp.diagonal(logp, axis1=0, axis2=2), axis=-1)
