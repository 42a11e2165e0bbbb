"""The host's file pages: rows of a memory-mapped set read without mapping them, and pages
released after a pass through the mapping.

The host feed (:mod:`semsad_jax.parallel.feed`) gathers each step's rows with :func:`read_rows`;
code that reads a whole mapped set (the decoded-data cache, the bank's digest and features) calls
:func:`release_pages` after each chunk, so a set bigger than RAM never stays resident.
"""

from __future__ import annotations

import mmap
import os

import numpy as np


def _mapping(images: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` an array (or a view of one) reads from, or None for an in-memory array."""
    base = images
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


def release_pages(images: np.ndarray) -> None:
    """Drops the pages of a memory-mapped ``images`` from this process's resident memory.

    They stay in the OS page cache (a re-read is cheap) but no longer count as the process's
    memory: for code that reads a whole mapped set through the mapping (the bank's digest and
    features), call it after each chunk. No-op for in-memory arrays.
    """
    base = _mapping(images)
    if base is not None and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def _file_rows(images: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset of row 0, bytes per row) of a C-contiguous memory-mapped array, or None."""
    if not isinstance(images, np.memmap) or not images.filename or not images.flags.c_contiguous:
        return None
    base = _mapping(images)
    if base is None or not hasattr(os, "preadv"):
        return None
    mapped_at = np.frombuffer(base, np.uint8).ctypes.data  # where the mapping starts in memory
    first = images.offset - images.offset % mmap.ALLOCATIONGRANULARITY  # ... and in the file
    return images.filename, first + images.ctypes.data - mapped_at, images[:1].nbytes


def read_rows(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``images[indices]`` as a new C-contiguous array.

    Rows of a memory-mapped file are read with ``os.preadv`` rather than through the mapping:
    a read through a mapping maps whole page-cache folios into the process (on Linux up to 2 MB
    per random row: 256 rows of 12 KB took 440 MB of resident memory), a read copies the row only.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    source = _file_rows(images)
    if source is None:
        return np.ascontiguousarray(images[indices])
    path, first, row_bytes = source
    out = np.empty((len(indices), *images.shape[1:]), images.dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        for k, i in enumerate(indices):
            row = memoryview(out[k : k + 1]).cast("B")
            if os.preadv(fd, [row], first + int(i) * row_bytes) != row_bytes:
                raise OSError(f"{path} ended before row {i}; rebuild the decoded-data cache")
    finally:
        os.close(fd)
    return out
