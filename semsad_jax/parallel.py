"""Devices, the 1-D ``('data',)`` mesh and the shardings every stage uses.

The global batch is sharded over all devices of all hosts along ``'data'``; model and optimiser state
are replicated. The same code runs on 1 CPU, 1 GPU, 8 GPUs and several hosts (call
:func:`maybe_initialize_distributed` first on multi-host).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from semsad_jax.errors import SemsadError

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize()`` when a multi-host launch is detected.

    Detected by the usual coordinator variables (``JAX_COORDINATOR_ADDRESS``, SLURM, Open MPI, or
    ``SEMSAD_DISTRIBUTED=1``); a single-process run does nothing.
    """
    keys = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE")
    size = int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2")))
    if (
        os.environ.get("SEMSAD_DISTRIBUTED") == "1" or any(k in os.environ for k in keys)
    ) and size > 1:
        jax.distributed.initialize()


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``('data',)`` over ``devices`` (default: every device of every host)."""
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


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of host arrays on every device of the mesh (works across hosts)."""
    return _place(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a pytree of host arrays holding the GLOBAL batch, each process a full copy, sharded."""
    return _place(batch, batch_sharding(mesh))


def to_host(tree: Any) -> Any:
    """Fetches a pytree of (possibly sharded, multi-host) arrays as numpy arrays on every process."""
    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, jax.device_get(tree))
