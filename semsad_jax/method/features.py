"""Inference-mode features of a whole image set, in padded, sharded batches on the device.

Used for the encoder's feature bank (L2-normalised h of every training image), the kNN monitor and
evaluation. The last batch is padded and the padding dropped, so every image is embedded exactly once
and (with running-statistics BatchNorm) no result depends on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from semsad_jax.augment.apply import to_float
from semsad_jax.errors import SemsadError
from semsad_jax.parallel.mesh import shard_batch, to_host
from semsad_jax.parallel.pages import release_pages


def padded_batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering range(n) in steps of ``batch_size`` (the last may be short)."""
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def round_batch(batch_size: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the number of devices."""
    n = mesh.devices.size
    return max(n, -(-batch_size // n) * n)


def map_batched(
    fn: Callable[..., Any],
    arrays: tuple[np.ndarray, ...],
    *,
    mesh: Mesh,
    batch_size: int,
) -> Any:
    """Applies a jitted ``fn(*batch) -> [B, ...]`` over the leading axis of ``arrays``.

    Each batch is padded (by repeating its last row) to the fixed ``batch_size`` so ``fn`` compiles
    once, sharded over ``'data'``; padding rows are dropped from the output. Returns numpy [N, ...],
    or, when ``fn`` returns a pytree of arrays (e.g. a tuple), the same pytree of numpy [N, ...].
    """
    n = len(arrays[0])
    batch_size = round_batch(min(batch_size, max(n, 1)), mesh)
    outputs = []
    for start, stop in padded_batches(n, batch_size):
        batch = []
        for a in arrays:
            chunk = a[start:stop]
            if stop - start < batch_size:
                pad = np.repeat(chunk[-1:], batch_size - (stop - start), axis=0)
                chunk = np.concatenate([chunk, pad])
            batch.append(chunk)
        out = to_host(fn(*shard_batch(tuple(batch), mesh)))
        outputs.append(jax.tree.map(lambda leaf, n=stop - start: leaf[:n], out))
        for a in arrays:  # a memory-mapped set read chunk by chunk does not stay resident
            release_pages(a)
    if not outputs:
        return np.zeros((0,), np.float32)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


OUTPUTS = ("head", "penultimate")


@partial(jax.jit, static_argnames=("graphdef", "normalize", "dtype", "outputs"))
def _embed(graphdef, params, batch_stats, images, normalize: bool, dtype, outputs: tuple[str, ...]):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    pooled = model.features(to_float(images, dtype))  # one forward pass for every output
    out = []
    for output in outputs:
        z = (model.project(pooled) if output == "head" else pooled).astype(jnp.float32)
        if normalize:
            z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
        out.append(z)
    return tuple(out)


def compute_features(
    graphdef: nnx.GraphDef,
    params: dict,
    batch_stats: dict,
    images: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int = 1024,
    normalize: bool = True,
    dtype: jnp.dtype = jnp.float32,
    output: str | tuple[str, ...] = "head",
) -> Any:
    """Embeds un-augmented images with the model in inference mode.

    Args:
      images: uint8 [N, H, W, 3].
      output: "head" (the model's output, h for the encoder) or "penultimate" (the pooled backbone
        features before the head, ``model.features``), or a tuple of them: every one from the same
        forward pass.
    Returns:
      float32 [N, D], L2-normalised rows when ``normalize``; a tuple of them for a tuple ``output``.
    """
    outputs = (output,) if isinstance(output, str) else tuple(output)
    for name in outputs:
        if name not in OUTPUTS:
            raise SemsadError(f"unknown features {name!r}; use one of {', '.join(OUTPUTS)}.")
    fn = lambda x: _embed(graphdef, params, batch_stats, x, normalize, dtype, outputs)
    out = map_batched(fn, (images,), mesh=mesh, batch_size=batch_size)
    if len(images) == 0:  # map_batched has no batch to take the structure from
        out = tuple(np.zeros((0,), np.float32) for _ in outputs)
    out = tuple(np.asarray(z, np.float32) for z in out)
    return out[0] if isinstance(output, str) else out
