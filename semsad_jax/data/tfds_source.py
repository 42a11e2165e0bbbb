"""The ``tfds:NAME/SPLIT`` source: prepare a TensorFlow Datasets dataset once, read it without TF.

A dataset not yet prepared in the data_dir (``$TFDS_DATA_DIR``, else TFDS's default
``~/tensorflow_datasets``) is downloaded and written in the array_record format, never fetched from
Google Cloud Storage. Preparing needs TensorFlow (a TFDS limitation: its builders and image encoder
use it); reading array_record data does not (TFDS decodes the images with PIL or OpenCV), so a
data_dir prepared on one machine can be copied to one without TensorFlow. Data prepared earlier in
TFDS's default tfrecord format (e.g. by ``tfds.load`` on Colab) is read through ``tf.data``.

Offline, TFDS takes the archives from the manual dir (``$TFDS_MANUAL_DIR``, else
DATA_DIR/downloads/manual) and verifies their registered checksums; when a download is needed and its
host cannot be reached, the load fails at once, not after TFDS's minutes of retries. docs/tfds.md.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
import urllib.request
from typing import Any, NamedTuple

import numpy as np

from semsad_jax.data.arrays import images_from_array
from semsad_jax.errors import SemsadError

__all__ = ["TfdsImages", "read_tfds"]

CHUNK = 1024  # examples read (and decoded) at a time
PROBE_TIMEOUT_S = 10.0
_INSTALL = "pip install 'semsad-jax[tfds]' (or tensorflow-cpu)"
_NETWORK_LIBS = ("requests", "urllib3")  # what TFDS downloads with


class TfdsImages(NamedTuple):
    """A read split: uint8 [N, image_size, image_size, 3], int32 [N] labels or None, names."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None


def read_tfds(name: str, split: str, image_size: int) -> TfdsImages:
    """Reads split ``split`` of TFDS dataset ``name``, preparing it first when it is not prepared.

    Args:
      name: TFDS name, with optional ``/config`` and ``:version`` (e.g. ``cifar10``).
      split: TFDS split with optional slicing (e.g. ``test[:1000]``).
      image_size: output side length; other sizes are resized by :func:`images_from_array`.

    Returns:
      The images in the prepared order, the ``label`` feature (if any) and its class names.

    Raises:
      SemsadError: one line naming the problem and what to do (no TensorFlow to prepare or to read
        tfrecord data, no network, unknown name or split, no ``image`` feature, empty split).
    """
    tfds = _import_tfds()
    try:
        builder = _builder(tfds, name)
        if not builder.is_prepared():
            _prepare(tfds, builder, name)
        features = builder.info.features
        if "image" not in list(features.keys()):
            raise SemsadError(f"tfds dataset {name!r} has no 'image' feature; pick another")
        label = features["label"] if "label" in list(features.keys()) else None
        images, labels = _read(tfds, builder, name, split, image_size, label is not None)
    except SemsadError:
        raise
    except Exception as err:  # tfds / tf raise many types; all mean "cannot get this dataset"
        raise SemsadError(
            f"tfds could not load {name}/{split} ({_describe(err)}); check the name and split, the "
            "network for the first download, and TFDS_DATA_DIR"
        ) from err
    if not images:
        raise SemsadError(f"tfds split {name}/{split} is empty; choose another")
    names = getattr(label, "names", None)
    return TfdsImages(
        np.concatenate(images),
        np.concatenate(labels).astype(np.int32) if labels else None,
        [str(n) for n in names] if names else None,
    )


def _import_tfds() -> Any:
    try:
        import importlib_resources  # noqa: F401  TFDS imports it; declares it for Python < 3.9
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise SemsadError(
            f"tfds: sources need tensorflow-datasets and importlib_resources ({err}); pip install "
            "'semsad-jax[tfds]' (or tensorflow-datasets importlib_resources), or use a "
            "folder:/archive:/npz: source"
        ) from err
    try:  # no Google Cloud Storage (tfds.builder looks up dataset infos there up to TFDS 4.9.7)
        from tensorflow_datasets.core.utils import gcs_utils

        gcs_utils._is_gcs_disabled = True  # TFDS's own switch (its tests set it); 4.9.8+: default
    except ImportError:  # pragma: no cover - a TFDS without the module
        pass
    return tfds


def _builder(tfds: Any, name: str) -> Any:
    """The builder of ``name`` in the data_dir ($TFDS_DATA_DIR or TFDS's default); no GCS."""
    return tfds.builder(name, data_dir=os.environ.get("TFDS_DATA_DIR") or None, try_gcs=False)


def _manual_dir(builder: Any) -> str:
    return os.environ.get("TFDS_MANUAL_DIR") or os.path.join(
        os.fspath(builder.data_dir_root), "downloads", "manual"
    )


def _prepare(tfds: Any, builder: Any, name: str) -> None:
    """Downloads (or takes from the manual dir) and writes ``builder``'s data as array_record."""
    _require_tensorflow(
        f"preparing tfds dataset {name} needs TensorFlow, a TFDS limitation",
        f"{_INSTALL}, or prepare it on another machine and point TFDS_DATA_DIR at its data_dir",
    )
    manual = _manual_dir(builder)
    _check_network(builder, name, manual)
    config = tfds.download.DownloadConfig(
        try_download_gcs=False, manual_dir=os.environ.get("TFDS_MANUAL_DIR") or None
    )
    try:
        builder.download_and_prepare(file_format="array_record", download_config=config)
    except Exception as err:
        if type(err).__name__ == "NonMatchingChecksumError":
            raise SemsadError(
                f"tfds dataset {name}: a file in {manual} or the download cache does not match "
                f"TFDS's registered checksum ({_describe(err)}); download it again"
            ) from err
        if _is_network_error(err):
            raise SemsadError(
                f"tfds could not download {name} ({_describe(err)}): no network? put its files "
                f"into {manual}, or prepare it on another machine and point TFDS_DATA_DIR at its "
                "data_dir"
            ) from err
        raise


def _require_tensorflow(problem: str, fix: str) -> None:
    try:
        import tensorflow  # noqa: F401
    except (ImportError, OSError) as err:
        raise SemsadError(f"{problem} ({_describe(err)}); {fix}") from err


def _check_network(builder: Any, name: str, manual: str) -> None:
    """Fails in seconds when a registered download is neither in ``manual`` nor downloaded, and
    its host (or proxy) cannot be reached: TFDS would retry it for minutes."""
    missing = []
    for url, info in (builder.url_infos or {}).items():
        filename = getattr(info, "filename", None)
        if filename and os.path.exists(os.path.join(manual, filename)):
            continue
        if _downloaded(builder, url, getattr(info, "checksum", None)):
            continue
        missing.append((url, filename or os.path.basename(urllib.parse.urlparse(url).path)))
    hosts = {urllib.parse.urlparse(url).netloc: url for url, _ in missing}
    problem = next(filter(None, map(_unreachable, hosts.values())), None)
    if problem:
        files, urls = ", ".join(f for _, f in missing), ", ".join(u for u, _ in missing)
        raise SemsadError(
            f"tfds could not download {name} ({problem}): no network? put {files} into {manual} "
            f"(download from {urls} on another machine), then run again"
        )


def _downloaded(builder: Any, url: str, checksum: str | None) -> bool:
    """Whether TFDS's download cache (DATA_DIR/downloads[/NAME]) already holds ``url``."""
    try:
        from tensorflow_datasets.core.download import resource
    except ImportError:  # pragma: no cover - another TFDS layout: let TFDS decide
        return True
    downloads = os.path.join(os.fspath(builder.data_dir_root), "downloads")
    url_digest = hashlib.sha256(url.encode()).hexdigest()  # names a download of unknown checksum
    for folder in (os.path.join(downloads, builder.name), downloads):
        for digest in {checksum or url_digest, url_digest}:
            if os.path.exists(os.path.join(folder, resource.get_dl_fname(url, digest))):
                return True
    return False


def _unreachable(url: str) -> str | None:
    """None when a TCP connection to ``url``'s host (or its proxy) opens, else the reason."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or host, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"cannot connect to {host}:{port}: {err}"
    return None


def _is_network_error(err: BaseException | None) -> bool:
    """Whether ``err`` or an exception it came from is a failed connection or download."""
    for _ in range(16):  # the cause chain, bounded (it could loop)
        if err is None:
            return False
        kind = type(err)
        if isinstance(err, ConnectionError | TimeoutError | socket.gaierror) or (
            kind.__name__ == "DownloadError" or kind.__module__.split(".")[0] in _NETWORK_LIBS
        ):
            return True
        err = err.__cause__ or err.__context__
    return False


def _read(
    tfds: Any, builder: Any, name: str, split: str, image_size: int, has_label: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(image chunks, label chunks): array_record by random access, else tfrecord via tf.data."""
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError:  # prepared as tfrecord (no random access)
        return _read_tfrecord(tfds, builder, name, split, image_size, has_label)
    images, labels = [], []
    for start in range(0, len(source), CHUNK):
        examples = [source[i] for i in range(start, min(start + CHUNK, len(source)))]
        images.extend(_to_images([np.asarray(e["image"]) for e in examples], image_size))
        if has_label:
            labels.append(np.asarray([np.reshape(e["label"], -1)[0] for e in examples]))
    return images, labels


def _to_images(pictures: list[np.ndarray], image_size: int) -> list[np.ndarray]:
    """Stacks same-sized pictures into one array; pictures of varying size go one at a time."""
    if all(p.shape == pictures[0].shape for p in pictures):
        return [images_from_array(np.stack(pictures), image_size)]
    return [images_from_array(p[None], image_size) for p in pictures]


def _read_tfrecord(
    tfds: Any, builder: Any, name: str, split: str, image_size: int, has_label: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    _require_tensorflow(
        f"tfds dataset {name} in {builder.data_dir} is in tfrecord format, which needs TensorFlow",
        f"{_INSTALL}, or delete that folder and let semsad prepare it again (array_record)",
    )
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    fixed = None not in tuple(builder.info.features["image"].shape)
    images, labels = [], []
    for example in tfds.as_numpy(dataset.batch(CHUNK) if fixed else dataset):
        batch = example["image"] if fixed else example["image"][None]
        images.append(images_from_array(batch, image_size))
        if has_label:
            labels.append(np.reshape(example["label"], (len(batch), -1))[:, 0])
    return images, labels


def _describe(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}"
