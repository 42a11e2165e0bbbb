"""In-memory image sets: :class:`ImageSet` and the conversion of any image array to uint8 RGB."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.pages import release_pages

__all__ = ["ImageSet", "array_digest", "check_image_size", "images_from_array"]
_DIGEST_CHUNK_BYTES = 64 << 20


def array_digest(arrays: Iterable[np.ndarray]) -> str:
    """A short hex digest of the shapes, dtypes and bytes of host ``arrays``, in order.

    Read in chunks (a memory-mapped set is never copied whole; its pages are released after each
    chunk), so it costs one read of the data: about 0.2 s for CIFAR-10's 150 MB of 32 px images.
    """
    h = hashlib.blake2b(digest_size=8)
    for array in arrays:
        array = np.asarray(array) if not isinstance(array, np.ndarray) else array
        h.update(f"{array.shape}{array.dtype}".encode())
        flat = np.ascontiguousarray(array).reshape(-1)
        step = max(1, _DIGEST_CHUNK_BYTES // max(flat.itemsize, 1))
        for start in range(0, flat.size, step):
            h.update(flat[start : start + step].tobytes())
        release_pages(array)
    return h.hexdigest()


@dataclasses.dataclass(eq=False)
class ImageSet:
    """A loaded image set.

    Attributes:
      images: uint8 [N, H, W, 3].
      labels: int32 [N] class indices, or None.
      class_names: index -> name, or None.
      spec: the spec string it came from.
      ids: per-image source id: the file path inside the folder / archive, or str(index).
      is_outlier: bool [N] marking contaminating images (set by :func:`contaminate`), or None.

    Instances compare by identity (they hold arrays). :attr:`digest` identifies the decoded
    images (what a workdir records of its training data).
    """

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None
    spec: str
    ids: list[str]
    is_outlier: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @functools.cached_property
    def digest(self) -> str:
        """:func:`array_digest` of the images (computed once per set)."""
        return array_digest([self.images])

    def subset(self, indices: np.ndarray | Sequence[int]) -> ImageSet:
        """The images at ``indices`` (int [M]), with their labels, ids and outlier flags."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            spec=self.spec,
            ids=[self.ids[i] for i in idx],
            is_outlier=None if self.is_outlier is None else self.is_outlier[idx],
        )


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise SemsadError(f"image_size must be an integer, got {image_size!r}; e.g. 32")
    if not 1 <= int(image_size) <= 4096:
        raise SemsadError(f"image_size must be between 1 and 4096, got {image_size}; e.g. 32")
    return int(image_size)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.rint(array * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise SemsadError("image array holds NaN or inf values; clean the data first")
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    raise SemsadError(f"image array has dtype {array.dtype}; give uint8, integer or float images")


def images_from_array(array: np.ndarray, image_size: int) -> np.ndarray:
    """Any image array -> uint8 [N, image_size, image_size, 3].

    Args:
      array: [N, H, W] or [N, H, W, C] with C in (1, 3, 4). uint8 is used as is; uint16 is scaled
        from 0..65535; other integers are clipped to 0..255; floats are read as 0..1 when their
        maximum is at most 1, else as 0..255. Grayscale is repeated to RGB, alpha is dropped.
      image_size: output side length; other sizes are resized (PIL bilinear, antialiased, aspect
        ratio not kept); images already that size are not touched.
    """
    image_size = check_image_size(image_size)
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape[1:3]:
        raise SemsadError(
            f"image array has shape {array.shape}; expected [N, H, W] or [N, H, W, C] with C "
            "in 1, 3, 4"
        )
    array = _to_uint8(array)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    if array.shape[1:3] == (image_size, image_size):
        return np.ascontiguousarray(array)
    out = np.empty((array.shape[0], image_size, image_size, 3), np.uint8)
    for i, image in enumerate(array):
        resized = Image.fromarray(np.ascontiguousarray(image)).resize(
            (image_size, image_size), Image.Resampling.BILINEAR
        )
        out[i] = np.asarray(resized)
    return out
