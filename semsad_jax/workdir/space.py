"""Disk space: check before a large write, and turn a full disk into one line that says what to do.

A workdir often lives on a small or shared disk. Every large write of a run (checkpoints, the
feature bank, stage.json and eval outputs) first checks the free space against what it will write
(:func:`check_free`); a write that still fails for want of space (another writer filled the disk)
is caught by :func:`reporting_disk_full`, which removes the half-written temporary files of that
write only and raises :class:`~semsad_jax.errors.DiskFull` naming the path, the space needed and
the step to resume from. What was saved before stays as it was: checkpoints are committed by
renaming a finished temporary directory, JSON files by renaming a finished temporary file.

Orbax reports a failed background save in its own threads with long tracebacks; while a write is
reported by us, :func:`quiet_disk_full_logs` drops those records (the error still reaches us and
is reported once, in one line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

from semsad_jax.errors import DiskFull, is_disk_full

__all__ = [
    "check_free",
    "free_bytes",
    "human",
    "quiet_disk_full_logs",
    "reporting_disk_full",
    "tree_bytes",
]

# Orbax stores metadata beside the arrays (per-array entries, manifests) and holds lock and
# temporary files while it writes: a margin per array and per save, and a factor for the peak
# (the smoke encoder's checkpoint: 0.72 MB of arrays, 0.81 MB on disk, more while writing).
_PEAK = 1.25
_PER_ARRAY = 1024
_PER_SAVE = 64 << 10


def tree_bytes(tree: Any) -> int:
    """Bytes a save of ``tree`` (arrays or ShapeDtypeStructs) may take at its peak with Orbax."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]
    data = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves)
    return int(_PEAK * data) + _PER_ARRAY * len(leaves) + _PER_SAVE


def human(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(path: str) -> int:
    """Free bytes (for this user) on the filesystem that holds ``path`` or its nearest parent."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return int(shutil.disk_usage(path).free)


def _message(what: str, path: str, needed: int, free: int, then: str, failed: bool) -> str:
    how = "ran out of space" if failed else "does not fit"
    return (
        f"disk full: {what} {how} in {path} (needs about {human(needed)}, {human(free)} free); "
        f"nothing saved before was lost. Free space there (or move the workdir), then {then}."
    )


def check_free(path: str, needed: int, what: str, then: str = "rerun the same command") -> None:
    """Raises :class:`DiskFull` when the filesystem of ``path`` has fewer than ``needed`` bytes."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFull(_message(what, path, needed, free, then, failed=False))


@contextlib.contextmanager
def reporting_disk_full(
    path: str,
    needed: int,
    what: str,
    then: str = "rerun the same command",
    cleanup: Iterable[str] | None = None,
) -> Iterator[None]:
    """Turns a full disk inside the block into :class:`DiskFull` (one line, no traceback).

    ``cleanup``: files or directories the failed write left half-written (removed first, so they
    are never taken for good ones and give their space back); a callable returning them is fine.
    """
    quiet_disk_full_logs()
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        for leftover in (cleanup() if callable(cleanup) else cleanup) or ():
            _remove(leftover)
        raise DiskFull(_message(what, path, needed, free_bytes(path), then, failed=True)) from None


def _remove(path: str) -> None:
    if jax.process_index() != 0:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


class _DropDiskFull(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(err) or is_disk_full(Exception(record.getMessage())))


_FILTER = _DropDiskFull()
_LOGGERS = ("absl", "orbax", "jax")


def quiet_disk_full_logs() -> None:
    """Drops log records about a full disk (Orbax's background threads log each failed save with
    its traceback, several times); installed by every writer that reports a full disk itself.
    Idempotent; other records pass unchanged."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
