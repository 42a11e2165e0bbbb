"""On-disk cache of decoded image sets (``.npz`` files, written atomically).

Directory: the ``cache_dir`` argument, else ``$SEMSAD_CACHE``, else ``~/.cache/semsad_jax``; the
value "none" (any case) turns caching off. An entry's name hashes the spec string, the absolute
source path, image_size, on_corrupt and a caller-given state string (for files: size and mtime),
so changing any of them, or the file itself, makes a new entry. Unreadable entries are rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from semsad_jax.data.specs import Spec

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def resolve_cache_dir(cache_dir: str | None = None) -> str | None:
    """The cache directory to use, or None when caching is off."""
    chosen = cache_dir or os.environ.get("SEMSAD_CACHE") or "~/.cache/semsad_jax"
    return None if chosen.strip().lower() == "none" else os.path.expanduser(chosen)


def cache_file(spec: Spec, image_size: int, on_corrupt: str, state: str, cache_dir: str) -> str:
    """The entry path for this spec / size / policy / source state."""
    key = repr((CACHE_FORMAT, spec.text, os.path.abspath(spec.location), image_size, on_corrupt))
    digest = hashlib.sha256((key + state).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{spec.kind}-{digest}.npz")


def read_cache(path: str) -> dict | None:
    """The stored arrays (images, ids, and labels / class_names when present), or None."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            entry = {name: npz[name] for name in npz.files}
        if entry["images"].ndim != 4 or len(entry["ids"]) != len(entry["images"]):
            raise ValueError("inconsistent arrays")
    except Exception as err:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring unreadable cache file %s (%s); rebuilding it", path, err)
        return None
    log.info("loaded from cache %s", path)
    return entry


def write_cache(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Writes arrays to ``path`` via a temporary file and os.replace; failures only warn."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as err:
        log.warning("could not write cache file %s (%s); continuing without it", path, err)
        if os.path.exists(tmp):
            os.remove(tmp)
