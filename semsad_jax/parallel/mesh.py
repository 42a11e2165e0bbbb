"""Devices, the 1-D ``('data',)`` mesh and the shardings every stage uses.

The global batch is sharded over all devices of all processes along ``'data'``; model and optimiser
state are replicated. The same code runs on 1 CPU, 1 GPU, 8 GPUs and several hosts (the launch is
:mod:`semsad_jax.parallel.launch`). Host arrays are placed with ``jax.make_array_from_callback``, so
each process builds only the shards of its own (addressable) devices.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.pages import read_rows

log = logging.getLogger(__name__)
DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``('data',)`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, what: str) -> None:
    """Raises a one-line :class:`SemsadError` unless ``batch_size`` splits evenly over the mesh."""
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise SemsadError(
            f"{what}={batch_size} is not divisible by the {n} devices in use; "
            f"set it to a multiple of {n} (e.g. --config.{what}={max(n, batch_size // n * n)})."
        )


def _place(tree: Any, sharding: NamedSharding) -> Any:
    """Places a pytree of host arrays, each process holding a full copy, with ``sharding``."""

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def put(x: Any, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put(x, sharding)`` that also works when ``sharding`` spans other processes'
    devices (then every process passes the same ``x`` and places only its own shards)."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(put(jax.random.key_data(x), sharding))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of host arrays on every device of the mesh (works across processes)."""
    return _place(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a pytree of host arrays holding the GLOBAL batch, each process a full copy, sharded."""
    return _place(batch, batch_sharding(mesh))


def shard_rows(images: np.ndarray, indices: np.ndarray, mesh: Mesh) -> jax.Array:
    """``images[indices]`` as a batch-sharded array, each process gathering only its own shards.

    ``images`` is a host array (in memory or memory-mapped, :func:`parallel.pages.read_rows`) that every process
    holds; the gather runs once per addressable device with that device's slice of ``indices``,
    so a process never reads the rows of another process's devices.
    """
    indices = np.asarray(indices)
    shape = (len(indices), *images.shape[1:])
    fetch = lambda index: read_rows(images, indices[index[0]])
    return jax.make_array_from_callback(shape, batch_sharding(mesh), fetch)


def _fetch(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:  # every process holds it whole: no collective needed
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def to_host(tree: Any) -> Any:
    """Fetches a pytree of (possibly sharded, multi-process) arrays as numpy arrays on every process.

    A sharded array that spans other processes' devices is gathered (a collective: every process
    must call this in the same order); host arrays and replicated arrays are read locally.
    """
    return jax.tree.map(_fetch, tree)
