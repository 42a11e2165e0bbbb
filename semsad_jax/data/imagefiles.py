"""Image files in a folder or inside an archive: listing, class labels from subfolders, decoding.

Layout rules (``folder:PATH`` and ``archive:PATH!SUBDIR`` alike):

* Only files with an image extension (:data:`IMAGE_EXTENSIONS`, case-insensitive) are read; other
  files (``.txt``, ``.csv``, ...) are ignored silently, and so are hidden files and folders (name
  starting with ``.``) and ``__MACOSX``.
* When every image lies in a first-level subfolder, that subfolder is its class: class names are
  the subfolder names (of folders holding at least one image) sorted alphabetically, indices
  0..C-1. Deeper folders belong to their first-level class. Images lying directly in the root give
  an unlabelled set (when mixed with class folders, a warning says so).
* Order is deterministic: by class, then by path (sorted component-wise).
* Images are decoded with PIL in a thread pool: first frame only, EXIF orientation applied,
  16-bit scaled to 8-bit, grayscale / palette / CMYK converted to RGB, alpha dropped, then resized
  to image_size x image_size with PIL's antialiased bilinear filter when the size differs
  (aspect ratio is not kept).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageOps

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.pages import release_pages

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
_WORKERS = min(8, os.cpu_count() or 1)  # decoding threads


@dataclasses.dataclass
class FileList:
    """The image files of one folder / archive subfolder, in load order.

    Attributes:
      ids: per file: path relative to the folder (folder sources) or member name (archives).
      labels: int32 [N] class indices, or None when unlabelled.
      class_names: index -> subfolder name, or None.
      fingerprint: hex digest that changes when any listed file changes (name, size, mtime).
    """

    ids: list[str]
    labels: np.ndarray | None
    class_names: list[str] | None
    fingerprint: str


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def skipped_part(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def arrange(rel_paths: list[tuple[str, ...]], ids: list[str], where: str) -> FileList:
    """Orders files and derives labels from first-level folders (see the module docstring)."""
    loose = sum(len(p) == 1 for p in rel_paths)
    if 0 < loose < len(rel_paths):
        log.warning(
            "%s: %d image(s) lie directly in the root next to class folders, so the set is "
            "unlabelled; move them into a class folder to get labels",
            where,
            loose,
        )
    if loose:
        order = sorted(range(len(ids)), key=lambda i: rel_paths[i])
        return FileList([ids[i] for i in order], None, None, "")
    class_names = sorted({p[0] for p in rel_paths})
    index = {name: i for i, name in enumerate(class_names)}
    order = sorted(range(len(ids)), key=lambda i: (index[rel_paths[i][0]], rel_paths[i]))
    labels = np.array([index[rel_paths[i][0]] for i in order], dtype=np.int32)
    return FileList([ids[i] for i in order], labels, class_names, "")


def list_folder(root: str) -> FileList:
    """Lists the images below ``root`` (symlinks followed, each real directory visited once)."""
    if not os.path.exists(root):
        raise SemsadError(f"folder {root!r} does not exist; check the path in the data spec")
    if not os.path.isdir(root):
        hint = "use archive:PATH for an archive" if _looks_like_archive(root) else "use npz:PATH"
        raise SemsadError(f"{root!r} is not a folder; give a directory of images, or {hint}")
    rel_paths: list[tuple[str, ...]] = []
    stamps: list[tuple[int, int]] = []
    seen: set[str] = set()
    stack: list[tuple[str, ...]] = [()]
    while stack:
        parts = stack.pop()
        directory = os.path.join(root, *parts)
        real = os.path.realpath(directory)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(directory))
        except OSError as err:
            raise SemsadError(f"cannot list folder {directory!r}: {err.strerror}") from err
        for entry in entries:
            if skipped_part(entry.name):
                continue
            if entry.is_dir():
                stack.append((*parts, entry.name))
            elif entry.is_file() and is_image_name(entry.name):
                stat = entry.stat()
                rel_paths.append((*parts, entry.name))
                stamps.append((stat.st_size, stat.st_mtime_ns))
    if not rel_paths:
        raise SemsadError(
            f"folder {root!r} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "check the path"
        )
    files = arrange(rel_paths, ["/".join(p) for p in rel_paths], f"folder {root}")
    digest = hashlib.sha256()
    for rel, stamp in sorted(zip(rel_paths, stamps)):
        digest.update(repr(("/".join(rel), *stamp)).encode())
    files.fingerprint = digest.hexdigest()
    return files


def _looks_like_archive(path: str) -> bool:
    return path.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip"))


def file_fingerprint(path: str, what: str = "archive") -> str:
    """Identifies a data file's current content by absolute path, size and mtime."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        msg = f"{what} {path!r} does not exist; check the path in the data spec"
        raise SemsadError(msg) from None
    except OSError as err:
        raise SemsadError(f"cannot read {what} {path!r}: {err.strerror}") from err
    if not os.path.isfile(path):
        raise SemsadError(f"{path!r} is not a file; use folder:PATH for a directory of images")
    return repr((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16-bit scaled, alpha dropped, palette expanded)."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            values = values * (255.0 / 65535.0)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, image_size: int) -> np.ndarray:
    """Encoded image bytes -> uint8 [image_size, image_size, 3]; raises on unreadable data."""
    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * image_size:
            img.draft("RGB", (image_size, image_size))  # decode at a reduced DCT scale: faster
        img.load()
        if "exif" in img.info or img.format in ("TIFF", "MPO"):
            img = ImageOps.exif_transpose(img)  # camera orientation
        out = _to_rgb(img)
    if out.size != (image_size, image_size):
        out = out.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def _decode_chunk(payloads: list, image_size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decodes a list of bytes / file paths / read errors; returns images and per-item errors."""
    out = np.zeros((len(payloads), image_size, image_size, 3), np.uint8)
    errors: list[str | None] = [None] * len(payloads)
    for i, payload in enumerate(payloads):
        try:
            if isinstance(payload, Exception):
                raise payload
            if isinstance(payload, str):
                with open(payload, "rb") as handle:
                    payload = handle.read()
            out[i] = decode_image(payload, image_size)
        except Exception as err:  # any decoder failure means "unreadable image"
            text = str(err).strip().splitlines()
            errors[i] = f"{type(err).__name__}: {text[0][:200] if text else ''}"
    return out, errors


def _chunks(items: Iterator[tuple[int, object]], size: int) -> Iterator[tuple[list, list]]:
    positions, payloads = [], []
    for pos, payload in items:
        positions.append(pos)
        payloads.append(payload)
        if len(positions) == size:
            yield positions, payloads
            positions, payloads = [], []
    if positions:
        yield positions, payloads


def decode_all(
    items: Iterator[tuple[int, bytes | Exception | str]],
    count: int,
    image_size: int,
    describe: Callable[[int], str],
    on_corrupt: str,
    allocate: Callable[[tuple[int, ...]], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes ``count`` items in blocks, each in a thread pool.

    Args:
      items: (position, encoded bytes | read error | file path) in any order.
      count: number of positions (0..count-1).
      image_size: output side length.
      describe: position -> file name for messages.
      on_corrupt: "skip" (drop unreadable images, logging how many) or "error" (SemsadError).
      allocate: ``shape -> uint8 array`` to decode into (e.g. a memory-mapped file of the
        decoded-data cache, so a set bigger than RAM never has to fit in memory); default zeros.
        Its decoded blocks are flushed and their pages released as it fills.

    Returns:
      (uint8 [M, image_size, image_size, 3], int64 [M] sorted positions of the decoded items).
    """
    shape = (count, image_size, image_size, 3)
    out = np.zeros(shape, np.uint8) if allocate is None else allocate(shape)
    reasons: dict[int, str] = {}

    def store(positions: list[int], result: tuple[np.ndarray, list[str | None]]) -> None:
        out[positions] = result[0]
        reasons.update((p, r) for p, r in zip(positions, result[1]) if r is not None)

    # Read a block, then decode it in threads (PIL releases the GIL while decoding and resizing);
    # reading and decoding never overlap, so the reader is not starved of the GIL.
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        for positions, payloads in _chunks(items, 64 * _WORKERS):
            parts = [slice(i, i + 64) for i in range(0, len(positions), 64)]
            blocks = [payloads[part] for part in parts]
            results = pool.map(_decode_chunk, blocks, [image_size] * len(blocks))
            for part, result in zip(parts, results):
                store(positions[part], result)
            if isinstance(out, np.memmap):  # written to the file: drop the pages from memory
                out.flush()
                release_pages(out)
            if reasons and on_corrupt == "error":
                pos, reason = min(reasons.items())
                raise SemsadError(
                    f"cannot read image {describe(pos)} ({reason}); fix or delete it, "
                    "or load with on_corrupt='skip'"
                )
    failures = sorted(reasons.items())
    if failures:
        named = "; ".join(f"{describe(p)} ({r})" for p, r in failures[:3])
        more = " ..." if len(failures) > 3 else ""
        log.warning("skipped %d unreadable image(s) of %d: %s%s", len(failures), count, named, more)
    if count and len(failures) == count:
        raise SemsadError(
            f"none of the {count} images could be read (e.g. {describe(failures[0][0])}: "
            f"{failures[0][1]}); check the files"
        )
    if not failures:
        return out, np.arange(count, dtype=np.int64)
    kept = np.setdiff1d(np.arange(count), [p for p, _ in failures]).astype(np.int64)
    if not isinstance(out, np.memmap):
        return out[kept], kept
    # Compact in place (kept is increasing, so every source row is at or after its destination).
    for start in range(0, len(kept), 4096):
        sources = kept[start : start + 4096]
        out[start : start + len(sources)] = out[sources]
    out.flush()
    return out[: len(kept)], kept
