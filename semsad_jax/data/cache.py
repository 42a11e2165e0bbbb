"""On-disk cache of decoded image sets; the images are memory-mapped when read back.

Directory: the ``cache_dir`` argument, else ``$SEMSAD_CACHE``, else ``~/.cache/semsad_jax``; the
value "none" (any case) turns caching off. An entry's name hashes the spec string, the absolute
source path, image_size, on_corrupt and a caller-given state string (for files: size and mtime),
so changing any of them, or the file itself, makes a new entry. An entry is two files::

    <kind>-<hash>.images.npy   uint8 [>= N, S, S, 3], read back with np.load(mmap_mode="r"): only
                               the rows a step reads are paged in, so a set bigger than RAM works
    <kind>-<hash>.npz          ids, labels, class_names, count (N: the rows in use); written last
                               (an entry without it is incomplete and rebuilt)

Both are written atomically (temporary file, then rename). Folder and archive sources decode
straight into a new images file (:func:`new_images`), so their set never has to fit in memory. Entries of older versions (the images
inside the .npz) are still read, and rewritten in this layout on first use. Unreadable entries are
rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from semsad_jax.data.specs import Spec

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # part of every entry's name: bump to orphan all entries
IMAGES_SUFFIX = ".images.npy"


def resolve_cache_dir(cache_dir: str | None = None) -> str | None:
    """The cache directory to use, or None when caching is off."""
    chosen = cache_dir or os.environ.get("SEMSAD_CACHE") or "~/.cache/semsad_jax"
    return None if chosen.strip().lower() == "none" else os.path.expanduser(chosen)


def cache_file(spec: Spec, image_size: int, on_corrupt: str, state: str, cache_dir: str) -> str:
    """The entry path (its ``.npz``) for this spec / size / policy / source state."""
    key = repr((CACHE_FORMAT, spec.text, os.path.abspath(spec.location), image_size, on_corrupt))
    digest = hashlib.sha256((key + state).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{spec.kind}-{digest}.npz")


def images_file(path: str) -> str:
    """The ``.images.npy`` beside the entry ``path`` (``.npz``)."""
    return path[: -len(".npz")] + IMAGES_SUFFIX if path.endswith(".npz") else path + IMAGES_SUFFIX


def read_cache(path: str) -> dict | None:
    """The stored arrays (images memory-mapped, ids, labels / class_names when present), or None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            entry = {name: npz[name] for name in npz.files}
        if "images" in entry:  # an entry of an older version: rewrite it in this layout
            write_cache(path, entry)
        images = np.load(images_file(path), mmap_mode="r", allow_pickle=False)
        count = int(entry.pop("count", len(images)))
        if images.ndim != 4 or images.dtype != np.uint8 or not len(entry["ids"]) == count:
            raise ValueError("inconsistent arrays")
        entry["images"] = images[:count]
    except Exception as err:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, err)
        return None
    log.info("loaded from cache %s", path)
    return entry


def temp_path(path: str) -> str:
    """The temporary name :func:`atomic_write` writes ``path`` under (unique per process)."""
    return f"{path}.tmp{os.getpid()}-{os.uname().nodename}"


def atomic_write(path: str, write) -> None:
    """``write(binary file)`` into :func:`temp_path`, then renamed to ``path``: ``path`` is either
    the old file or the whole new one; the temporary file never stays behind."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def new_images(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """A writable memory-mapped uint8 .npy of ``shape`` for the entry ``path``, to decode into;
    it becomes the entry's images file when :func:`write_cache` gets it (or a view of its first
    rows).

    Its blocks are allocated at once (``posix_fallocate``): writing into a sparse mapping on a
    full disk would kill the process with SIGBUS. When the cache's disk cannot hold the set, a
    warning says so and an in-memory array is returned instead (:func:`write_cache` then tries
    an ordinary write, which only warns when it fails).
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temp_path(images_file(path))
    images = np.lib.format.open_memmap(tmp, "w+", np.uint8, shape)
    if not hasattr(os, "posix_fallocate"):  # macOS: no preallocation
        return images
    try:
        with open(tmp, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, os.path.getsize(tmp))
    except OSError as err:
        del images
        os.remove(tmp)
        log.warning("the cache's disk cannot hold %s (%s); decoding in memory", path, err)
        return np.empty(shape, np.uint8)
    return images


def write_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes an entry (images first, the .npz last), each atomically; failures only warn.

    ``arrays["images"]`` from :func:`new_images` is moved into place, not copied.
    """
    images = arrays["images"]
    rest = {k: v for k, v in arrays.items() if k != "images"}
    rest["count"] = np.asarray(len(images), np.int64)
    target = images_file(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if isinstance(images, np.memmap) and images.filename == os.path.abspath(temp_path(target)):
            images.flush()
            os.replace(images.filename, target)
        else:
            atomic_write(target, lambda f: np.save(f, np.asarray(images, np.uint8)))
        atomic_write(path, lambda f: np.savez(f, **rest))
    except OSError as err:
        log.warning("could not write cache file %s (%s); continuing without it", path, err)
