"""Where the uint8 training set lives while a stage trains (``data.placement``), and the host feed.

* ``device``: the whole set is copied to every device once; each jitted step gathers its batch
  rows there. Fastest when it fits.
* ``host``: the set stays a host array (in memory, or memory-mapped from the decoded-data cache, so
  a set bigger than RAM works); :class:`HostFeed` gathers each step's GLOBAL batch rows on the host
  (rows of a mapped file read with ``preadv``, :func:`parallel.pages.read_rows`, so they never stay
  resident) and transfers them batch-sharded (each process only the rows of its own devices), the
  next step's rows in a background thread while the current step runs.
* ``auto``: ``device`` when the set takes at most :data:`AUTO_DEVICE_FRACTION` of the smallest
  device's memory (devices without memory statistics, the CPU: the host's RAM shared by its
  devices), else ``host``.

Both give the same batches: the step indices come from the same (seed, step) function, run on the
device for ``device`` and on one local device for ``host`` (then fetched, int32 [B] per row set).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.launch import smallest
from semsad_jax.parallel.mesh import shard_rows

log = logging.getLogger(__name__)
PLACEMENTS = ("device", "host", "auto")
AUTO_DEVICE_FRACTION = 0.25  # auto: "device" while the set takes at most this of a device's memory


def device_memory(devices: Sequence | None = None) -> int:
    """Bytes the smallest of ``devices`` (default: this process's) can hold.

    From ``memory_stats()["bytes_limit"]`` (GPU, TPU); devices without statistics (the CPU) share the
    host's physical memory, so each gets RAM / number of devices (device placement copies the set to
    every one of them).
    """
    devices = list(devices) if devices is not None else jax.local_devices()
    limits = []
    for device in devices:
        try:
            stats = device.memory_stats() or {}
        except Exception:  # a backend without memory statistics
            stats = {}
        if stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    if limits:
        return min(limits)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(len(devices), 1)


def resolve_placement(placement: str, nbytes: int, devices: Sequence | None = None) -> str:
    """``"device"`` or ``"host"`` for a set of ``nbytes`` (``placement``: device, host or auto).

    ``auto`` compares with the smallest device of every process (a collective in a multi-process
    run, so every process decides the same).
    """
    if placement not in PLACEMENTS:
        raise SemsadError(
            f"data.placement={placement!r} is unknown; use device, host or auto "
            "(e.g. --config.data.placement=host)."
        )
    if placement != "auto":
        return placement
    budget = smallest(device_memory(devices))
    chosen = "device" if nbytes <= AUTO_DEVICE_FRACTION * budget else "host"
    log.info(
        "data.placement=auto: the training set takes %.2f GB, %.0f%% of the smallest device's "
        "%.2f GB; placing it on the %s",
        nbytes / 1e9,
        100 * nbytes / max(budget, 1),
        budget / 1e9,
        chosen,
    )
    return chosen


class HostFeed:
    """Each step's batch rows of a host array, placed batch-sharded, one step ahead.

    Args:
      images: uint8 [N, H, W, 3] host array (in memory or memory-mapped), the same on every process.
      indices: ``step -> (int [B], ...)``: the row sets of that step (e.g. the batch, or a pair's
        batch, partners and negatives); a pure function of the step.
      mesh: the device mesh; rows are sharded over ``'data'``.
      prefetch: gather step s + 1 in a background thread once step s is handed out.

    ``feed(step)`` returns one batch-sharded uint8 array per row set. Every process computes the
    same indices and gathers only the rows of its addressable shards.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: Callable[[int], tuple[np.ndarray, ...]],
        mesh: Mesh,
        *,
        prefetch: bool = True,
    ):
        self.images, self.mesh, self._indices = images, mesh, indices
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="semsad-feed")
            if prefetch
            else None
        )
        self._next: tuple[int, concurrent.futures.Future] | None = None

    def load(self, step: int) -> tuple[jax.Array, ...]:
        """The rows of ``step``, gathered and placed now."""
        return tuple(shard_rows(self.images, idx, self.mesh) for idx in self._indices(step))

    def __call__(self, step: int) -> tuple[jax.Array, ...]:
        pending, self._next = self._next, None
        if pending is not None and pending[0] == step:
            rows = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
            rows = self.load(step)
        if self._pool is not None:
            self._next = (step + 1, self._pool.submit(self.load, step + 1))
        return rows

    def close(self) -> None:
        """Stops the background thread (a pending prefetch is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._next = None
