"""Devices, mesh, shardings, where the training set lives, and multi-process launch.

* :mod:`~semsad_jax.parallel.mesh`: the 1-D ``('data',)`` mesh, shardings, host <-> device arrays;
* :mod:`~semsad_jax.parallel.pages`: rows of a memory-mapped set read by ``preadv``, mapped pages
  released;
* :mod:`~semsad_jax.parallel.feed`: ``data.placement`` (device / host / auto) and the host feed;
* :mod:`~semsad_jax.parallel.launch`: JAX's distributed runtime from the environment, the
  same-launch check, barriers and the exit of a process that lost a peer.
"""

from semsad_jax.parallel.feed import (
    AUTO_DEVICE_FRACTION,
    PLACEMENTS,
    HostFeed,
    device_memory,
    resolve_placement,
)
from semsad_jax.parallel.launch import (
    Launch,
    all_agree,
    check_same_launch,
    initialize_distributed,
    launch_from_env,
    leave,
    lost_peer,
    smallest,
    sync,
)
from semsad_jax.parallel.mesh import (
    DATA_AXIS,
    batch_sharding,
    check_divisible,
    make_mesh,
    put,
    replicate,
    replicated,
    shard_batch,
    shard_rows,
    to_host,
)
from semsad_jax.parallel.pages import read_rows, release_pages

__all__ = [
    "AUTO_DEVICE_FRACTION",
    "DATA_AXIS",
    "PLACEMENTS",
    "HostFeed",
    "Launch",
    "all_agree",
    "batch_sharding",
    "check_divisible",
    "check_same_launch",
    "device_memory",
    "initialize_distributed",
    "launch_from_env",
    "leave",
    "lost_peer",
    "make_mesh",
    "put",
    "read_rows",
    "release_pages",
    "replicate",
    "replicated",
    "resolve_placement",
    "shard_batch",
    "shard_rows",
    "smallest",
    "sync",
    "to_host",
]
