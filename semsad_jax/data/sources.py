"""Data sources: load any spec string into an :class:`ImageSet` of uint8 RGB images.

Spec syntax and the ``?classes= &exclude= &holdout= &part= &limit= &seed=`` query:
:mod:`semsad_jax.data.specs`.
Folder / archive layout rules and decoding: :mod:`semsad_jax.data.imagefiles`.

Every source yields uint8 [N, image_size, image_size, 3]. Labels are only used by monitors and
protocol splits, never for training. With ``classes=``, labels keep their original indices.

Decoded sets are cached on disk (:mod:`semsad_jax.data.cache`), keyed by the spec string,
image_size, on_corrupt and the files' size and mtime, so a second load takes seconds; with the cache
on, the images of a loaded set are memory-mapped from it (pages read on demand).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import zipfile

import numpy as np

from semsad_jax.data import archives, cache, imagefiles, synthetic, tfds_source
from semsad_jax.data.arrays import ImageSet, check_image_size, images_from_array
from semsad_jax.data.specs import Spec, parse_spec, select_indices
from semsad_jax.errors import SemsadError

__all__ = ["digits_split_indices", "load_images"]

log = logging.getLogger(__name__)
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _from_arrays(
    spec: Spec,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    image_size: int,
    ids: list[str] | None = None,
) -> ImageSet:
    """Applies the query to decoded arrays (before resizing), then converts the kept images."""
    keep = select_indices(spec, len(images), labels, class_names)
    ids = ids if ids is not None else [str(i) for i in range(len(images))]
    if keep is not None:
        images, ids = images[keep], [ids[i] for i in keep]
        labels = None if labels is None else labels[keep]
    labels = None if labels is None else np.asarray(labels, np.int32)
    return ImageSet(images_from_array(images, image_size), labels, class_names, spec.text, ids)


def _load_files(
    spec: Spec,
    image_size: int,
    on_corrupt: str,
    files: imagefiles.FileList,
    archive: archives.Archive | None = None,
    allocate=None,
) -> ImageSet:
    keep = select_indices(spec, len(files.ids), files.labels, files.class_names)
    ids = files.ids if keep is None else [files.ids[i] for i in keep]
    labels = files.labels if keep is None or files.labels is None else files.labels[keep]
    if spec.kind == "folder":
        root = spec.location
        items = ((pos, os.path.join(root, name)) for pos, name in enumerate(ids))
        describe = lambda p: os.path.join(root, ids[p])
    else:
        items = archive.read_many(ids)
        describe = lambda p: f"{spec.location}!{ids[p]}"
    images, kept = imagefiles.decode_all(
        items, len(ids), image_size, describe, on_corrupt, allocate
    )
    if len(kept) < len(ids):
        ids = [ids[i] for i in kept]
        labels = None if labels is None else labels[kept]
    return ImageSet(images, labels, files.class_names, spec.text, ids)


def _load_npz(spec: Spec, image_size: int) -> ImageSet:
    path = spec.location
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("a single .npy array, not an .npz archive")
            if "images" not in npz.files:
                raise ValueError(f"no 'images' array (arrays: {', '.join(npz.files)})")
            images = npz["images"]
            labels = npz["labels"] if "labels" in npz.files else None
            names = npz["class_names"] if "class_names" in npz.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SemsadError(
            f"cannot read npz file {path!r} ({err}); save it with np.savez(path, images=..., "
            "labels=..., class_names=...)"
        ) from err
    if images.ndim not in (3, 4):
        raise SemsadError(
            f"npz file {path!r}: 'images' has shape {images.shape}; expected [N, H, W] or "
            "[N, H, W, C]"
        )
    if names is not None:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.reshape(-1)]
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise SemsadError(
                f"npz file {path!r}: 'labels' must be integers of shape [{len(images)}], "
                f"got {labels.dtype} {labels.shape}; fix the file"
            )
        if len(labels) and (labels.min() < 0 or (names is not None and labels.max() >= len(names))):
            raise SemsadError(f"npz file {path!r}: labels out of range of class_names; fix it")
    return _from_arrays(spec, images, labels, names, image_size)


def digits_split_indices(target: np.ndarray, split: str) -> np.ndarray:
    """The fixed stratified split of sklearn digits: 20% of each class (RandomState(0)) is "test".

    Args:
      target: int [N] class of each image.
      split: "train" or "test".

    Returns:
      int64 [M] sorted indices. Uses the legacy RandomState, whose stream numpy keeps fixed.
    """
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test = []
    for cls in np.unique(target):
        members = rng.permutation(np.flatnonzero(target == cls))
        test.append(members[: round(DIGITS_TEST_FRACTION * len(members))])
    is_test = np.zeros(len(target), bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test).astype(np.int64)


def _load_sklearn(spec: Spec, image_size: int) -> ImageSet:
    if spec.location == "sample_images":
        return _from_arrays(spec, synthetic.sample_image_crops(), None, None, image_size)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = digits.target.astype(np.int32)
    ids = [str(i) for i in range(len(images))]
    if spec.split:
        keep = digits_split_indices(labels, spec.split)
        images, labels, ids = images[keep], labels[keep], [ids[i] for i in keep]
    names = [str(c) for c in range(10)]
    return _from_arrays(spec, images, labels, names, image_size, ids)


def _load_tfds(spec: Spec, image_size: int) -> ImageSet:
    """Prepares (once) and reads a TFDS split: :mod:`semsad_jax.data.tfds_source`."""
    images, labels, class_names = tfds_source.read_tfds(spec.location, spec.split, image_size)
    return _from_arrays(spec, images, labels, class_names, image_size)


def load_images(
    spec: str, image_size: int, *, cache_dir: str | None = None, on_corrupt: str = "skip"
) -> ImageSet:
    """Loads the images named by ``spec`` as uint8 [N, image_size, image_size, 3].

    Args:
      spec: a spec string (:mod:`semsad_jax.data.specs`), e.g. ``archive:c10.tgz!train?limit=500``.
      image_size: output side length in pixels.
      cache_dir: decoded-data cache (:mod:`semsad_jax.data.cache`); None or "" = $SEMSAD_CACHE or
        ~/.cache/semsad_jax; "none" = off.
      on_corrupt: for folder/archive sources, "skip" unreadable images (count and a few names are
        logged) or "error" (SemsadError naming the file).
    """
    parsed = parse_spec(spec)
    image_size = check_image_size(image_size)
    if on_corrupt not in ("skip", "error"):
        raise SemsadError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    files = None
    if parsed.kind == "folder":
        files = imagefiles.list_folder(parsed.location)
        state = files.fingerprint
    elif parsed.kind in ("archive", "npz"):
        state = imagefiles.file_fingerprint(parsed.location, f"{parsed.kind} file")
    else:
        state = os.environ.get("TFDS_DATA_DIR", "") if parsed.kind == "tfds" else ""
    directory = cache.resolve_cache_dir(cache_dir)
    path = directory and cache.cache_file(parsed, image_size, on_corrupt, state, directory)
    entry = cache.read_cache(path) if path else None
    if entry is not None:
        labels = entry.get("labels")
        names = [str(n) for n in entry["class_names"]] if "class_names" in entry else None
        return ImageSet(entry["images"], labels, names, parsed.text, entry["ids"].tolist())
    # Folders and archives decode straight into the cache's file: a set bigger than RAM works.
    pending: list[str] = []
    allocate = (lambda shape: _track(cache.new_images(path, shape), pending)) if path else None
    try:
        if parsed.kind == "archive":
            with archives.Archive(parsed.location) as archive:
                files = archive.list_images(parsed.subdir)
                loaded = _load_files(parsed, image_size, on_corrupt, files, archive, allocate)
        elif files is not None:
            loaded = _load_files(parsed, image_size, on_corrupt, files, allocate=allocate)
        elif parsed.kind == "npz":
            loaded = _load_npz(parsed, image_size)
        elif parsed.kind == "sklearn":
            loaded = _load_sklearn(parsed, image_size)
        elif parsed.kind == "synthetic":
            images = synthetic.synthetic_images(parsed.location)
            loaded = _from_arrays(parsed, images, None, None, image_size)
        else:
            loaded = _load_tfds(parsed, image_size)
        if not len(loaded):
            raise SemsadError(f"data spec {spec!r} selects no images; loosen its query")
    except BaseException:
        for name in pending:  # a decode that failed leaves no half-written file in the cache
            with contextlib.suppress(OSError):
                os.remove(name)
        raise
    if path:
        arrays = {"images": loaded.images, "ids": np.asarray(loaded.ids, dtype=str)}
        if loaded.labels is not None:
            arrays["labels"] = loaded.labels
        if loaded.class_names is not None:
            arrays["class_names"] = np.asarray(loaded.class_names, dtype=str)
        cache.write_cache(path, arrays)
        # Train from the memory-mapped copy: the decoded one is freed.
        entry = cache.read_cache(path)
        if entry is not None:
            loaded = dataclasses.replace(loaded, images=entry["images"])
    for name in pending:  # not moved into the cache (it could not be written): drop the file
        if os.path.exists(name):
            loaded = dataclasses.replace(loaded, images=np.array(loaded.images))
            os.remove(name)
    return loaded


def _track(images: np.ndarray, pending: list[str]) -> np.ndarray:
    if isinstance(images, np.memmap):  # not when the cache's disk was full (in memory)
        pending.append(images.filename)
    return images
