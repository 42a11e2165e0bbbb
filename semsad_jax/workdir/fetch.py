"""Where a detector comes from: :func:`resolve_detector` turns a source into a directory that
:meth:`semsad_jax.Detector.restore` reads.

A source is

* a directory (a workdir or an extracted detector): itself;
* a detector archive (``.tar.gz``, :mod:`semsad_jax.workdir.archive`) or its ``file://`` URL:
  extracted once into the cache;
* an ``http://`` / ``https://`` URL (optionally ``URL#sha256=HEX``): downloaded once, then as above;
* a shipped name (``digits``, ``cifar10_cpu``; :mod:`semsad_jax.workdir.shipped`): its archive in
  ``pretrained/`` of the checkout, else at the shipped base URL, checked against the registry.

The cache (``cache_dir``, else ``$SEMSAD_CACHE``, else ``~/.cache/semsad_jax``;
:func:`semsad_jax.data.cache.resolve_cache_dir`) holds::

    detectors/<sha256 of the archive>/        an extracted, verified detector (detector.json inside)
    detectors/downloads/<url hash>-<file>     a downloaded archive (<file>.<random>.part while it
                                              streams; renamed only once checked and extracted)

Every entry appears by an atomic rename, so the cache holds whole entries only: a failed download,
checksum, extraction or verification leaves no ``.part`` file and no partial directory, and an
entry made before stays as it was. A second call for the same source reuses the extraction (for a
URL, without touching the network). Standard library only.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from semsad_jax._version import __version__
from semsad_jax.data.cache import resolve_cache_dir
from semsad_jax.errors import DiskFull, SemsadError, is_disk_full
from semsad_jax.workdir.archive import MANIFEST, extract_detector, file_sha256
from semsad_jax.workdir.shipped import (
    SHIPPED,
    local_archive,
    shipped_detector,
    shipped_names,
    shipped_url,
)

__all__ = ["detector_cache", "package_name", "resolve_detector"]
log = logging.getLogger(__name__)
_CHUNK = 1 << 16
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def resolve_detector(
    source: str,
    *,
    sha256: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> str:
    """A local directory holding the detector ``source`` (see the module docstring).

    Args:
      source: a directory, a detector archive, a ``file://``, ``http://`` or ``https://`` URL (a
        ``#sha256=HEX`` fragment is the expected checksum) or a shipped detector's name.
      sha256: the archive's expected sha256 (hex), or None (not checked, except for shipped names).
      cache_dir: the cache (default ``$SEMSAD_CACHE`` or ``~/.cache/semsad_jax``).
      progress: show the download's progress (on a terminal) and a one-line summary on stderr.
      timeout: seconds a download may go without data before it is abandoned.
    Raises a one-line SemsadError for anything that cannot be resolved, downloaded or verified.
    """
    source = os.fspath(source)
    location, fragment = _split_fragment(source) if "://" in source else (source, None)
    expected = _expected(sha256, fragment)
    scheme = urllib.parse.urlsplit(location).scheme.lower() if "://" in location else ""
    if scheme in ("http", "https"):
        return _from_url(location, expected, cache_dir, progress, timeout)
    if scheme == "file":
        path = os.path.abspath(urllib.request.url2pathname(urllib.parse.urlsplit(location).path))
    elif scheme:
        raise SemsadError(f"{source}: unsupported URL scheme {scheme!r}; use https, http or file.")
    else:
        path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        if expected:
            raise SemsadError(f"{source} is a directory; sha256= checks an archive, pass none.")
        return path
    if os.path.isfile(path):
        return _from_archive(path, expected, cache_dir, location)
    if scheme == "file":
        raise SemsadError(f"{location}: no such file; pass the URL of a detector archive.")
    if source in SHIPPED:
        return _from_shipped(source, expected, cache_dir, progress, timeout)
    if os.sep in source or source.startswith(("~", ".")) or source.endswith(_ARCHIVE_SUFFIXES):
        raise SemsadError(
            f"{source} does not exist; pass a trained workdir, a detector archive, its URL or a "
            f"shipped detector's name ({', '.join(shipped_names())})."
        )
    raise SemsadError(
        f"unknown detector {source!r}: not a directory, file or URL, and not a shipped detector "
        f"(known: {', '.join(shipped_names())}); pass one of those or a path or URL."
    )


def package_name(source: str) -> str:
    """A short name for ``source`` (for output folders): the shipped name, or the archive's or
    directory's base name without ``.tar.gz``."""
    source = os.fspath(source)
    if source in SHIPPED:
        return source
    location = _split_fragment(source)[0] if "://" in source else source
    if "://" in location:
        location = urllib.parse.unquote(urllib.parse.urlsplit(location).path)
    base = os.path.basename(location.rstrip("/\\"))
    for suffix in _ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", base).strip("._") or "detector"


def detector_cache(cache_dir: str | None = None) -> str:
    """``<cache>/detectors``; a one-line SemsadError when caching is off (``none``)."""
    root = resolve_cache_dir(cache_dir)
    if root is None:
        raise SemsadError(
            "the cache is off (SEMSAD_CACHE=none) but a detector archive must be extracted "
            "somewhere; set SEMSAD_CACHE (or cache_dir=) to a directory."
        )
    return os.path.join(root, "detectors")


# ---- the sources ----------------------------------------------------------------------------------
def _split_fragment(url: str) -> tuple[str, str | None]:
    base, _, fragment = url.partition("#")
    if not fragment:
        return base, None
    match = re.fullmatch(r"sha256=([0-9A-Fa-f]*)", fragment)
    if not match:
        raise SemsadError(
            f"{url}: unknown fragment #{fragment}; use URL#sha256=HEX or no fragment."
        )
    return base, match.group(1)


def _expected(sha256: str | None, fragment: str | None) -> str | None:
    given = [s.strip().lower() for s in (sha256, fragment) if s]
    for value in given:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise SemsadError(f"sha256 {value!r} is not 64 hex digits; pass the archive's sha256.")
    if len(given) == 2 and given[0] != given[1]:
        raise SemsadError(
            f"sha256= ({given[0]}) and the URL's #sha256= ({given[1]}) differ; pass only one."
        )
    return given[0] if given else None


def _mismatch(label: str, expected: str, got: str, what: str) -> SemsadError:
    return SemsadError(f"{label}: expected sha256 {expected}, got {got}; {what}.")


def _extracted(archive: str, digest: str, cache: str, label: str) -> str:
    """``cache/<digest>``, extracted from ``archive`` unless it is there already."""
    dest = os.path.join(cache, digest)
    if os.path.isfile(os.path.join(dest, MANIFEST)):
        return dest
    if os.path.isdir(dest):  # not made by this module (entries appear whole): start afresh
        shutil.rmtree(dest)
    try:
        return extract_detector(archive, dest, name=label)
    except SemsadError:
        if os.path.isfile(os.path.join(dest, MANIFEST)):  # another process extracted it meanwhile
            return dest
        raise


def _from_archive(path: str, expected: str | None, cache_dir: str | None, label: str) -> str:
    digest = file_sha256(path)
    if expected and digest != expected:
        raise _mismatch(label, expected, digest, "check the file and the sha256 you passed")
    return _extracted(path, digest, detector_cache(cache_dir), label)


def _from_shipped(
    name: str, expected: str | None, cache_dir: str | None, progress: bool, timeout: float
) -> str:
    recorded = shipped_detector(name).sha256
    if recorded and expected and recorded != expected:
        raise SemsadError(
            f"the shipped detector {name!r} has sha256 {recorded}, not the {expected} passed; "
            "pass no sha256 for a shipped name."
        )
    expected = recorded or expected
    if expected is None:
        log.warning("the shipped detector %r has no recorded sha256 yet: not verified", name)
    local = local_archive(name)
    if local is not None:
        return _from_archive(local, expected, cache_dir, local)
    return _from_url(shipped_url(name), expected, cache_dir, progress, timeout)


def _from_url(
    url: str, expected: str | None, cache_dir: str | None, progress: bool, timeout: float
) -> str:
    cache = detector_cache(cache_dir)
    target = os.path.join(cache, "downloads", _download_name(url))
    if os.path.isfile(target):  # downloaded before: no network unless it is not the one wanted
        digest = file_sha256(target)
        if expected is None or digest == expected:
            try:
                return _extracted(target, digest, cache, url)
            except SemsadError as err:
                log.warning(
                    "the cached download %s is unusable (%s); downloading again", target, err
                )
                os.remove(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, part = tempfile.mkstemp(
        prefix=f"{os.path.basename(target)}.", suffix=".part", dir=os.path.dirname(target)
    )
    os.close(handle)
    bar = _Progress(os.path.basename(target).split("-", 1)[1], progress)
    try:
        digest = _download(url, part, bar, timeout)
        if expected and digest != expected:
            raise _mismatch(url, expected, digest, "the download was discarded")
        dest = _extracted(part, digest, cache, url)
        os.replace(part, target)
        bar.summary(url)
        return dest
    finally:
        if os.path.exists(part):
            os.remove(part)


def _download_name(url: str) -> str:
    base = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) or "detector"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[-80:]
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


# ---- the download -----------------------------------------------------------------------------------
def _download(url: str, part: str, bar: _Progress, timeout: float) -> str:
    """Streams ``url`` into ``part``; returns its sha256. One-line SemsadError on any failure."""
    request = urllib.request.Request(url, headers={"User-Agent": f"semsad-jax/{__version__}"})
    digest, got, total = hashlib.sha256(), 0, None
    stalled = (
        f"downloading {url} stalled (no data for {timeout:g} s); retry later or pass a larger "
        "timeout."
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                got += len(chunk)
                bar.update(got, total)
    except urllib.error.HTTPError as err:
        raise SemsadError(
            f"downloading {url} failed: HTTP {err.code} {err.reason}; check the URL."
        ) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise SemsadError(stalled) from None
        raise SemsadError(
            f"cannot download {url} ({err.reason}); check the URL and the network connection."
        ) from None
    except TimeoutError:
        raise SemsadError(stalled) from None
    except (http.client.HTTPException, OSError) as err:
        if is_disk_full(err):
            raise DiskFull(
                f"disk full: downloading {url} into {os.path.dirname(part)} ran out of space; free "
                "space there or set SEMSAD_CACHE to another disk, then retry."
            ) from None
        raise SemsadError(
            f"downloading {url} failed ({type(err).__name__}: {err}); retry."
        ) from None
    finally:
        bar.close()
    if total is not None and got < total:
        raise SemsadError(
            f"the download of {url} is truncated ({got} of {total} bytes); the partial download "
            "was discarded, retry."
        )
    return digest.hexdigest()


class _Progress:
    """A one-line progress bar on stderr (a terminal only) and a final summary line."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.got = name, enabled, 0
        self.live = enabled and sys.stderr.isatty()
        self.start = self.shown = time.monotonic()

    def update(self, got: int, total: int | None) -> None:
        self.got, now = got, time.monotonic()
        if not self.live or now - self.shown < 0.2:
            return
        self.shown = now
        size = f"{got / 1e6:.1f}" + (
            f"/{total / 1e6:.1f} MB {100 * got // total:3d}%" if total else " MB"
        )
        sys.stderr.write(f"\rdownloading {self.name}: {size}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.live and self.shown > self.start:
            sys.stderr.write("\n")

    def summary(self, url: str) -> None:
        if self.enabled:
            seconds = time.monotonic() - self.start
            print(f"downloaded {url} ({self.got / 1e6:.1f} MB in {seconds:.1f} s)", file=sys.stderr)
