"""Data-source spec strings: parsing and the ``?classes= &exclude= &holdout= &part= &limit= &seed=``
query.

One syntax everywhere (config files, CLI overrides, Python API)::

    tfds:NAME/SPLIT            tfds:cifar100/train, tfds:svhn_cropped/test, tfds:mnist/train[:1000]
    folder:PATH                a directory of images; first-level subfolders are the classes
    archive:PATH[!SUBDIR]      the same inside a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz/.zip
    npz:PATH                   arrays ``images`` [, ``labels``, ``class_names``]
    sklearn:digits[/train|/test]
    sklearn:sample_images      crops of scikit-learn's two sample photos (far OOD, offline)
    synthetic:NAME             noise, constant, blobs, stripes, checkerboard, shapes, text

followed by an optional query: ``?classes=cat,dog&exclude=frog&limit=500&seed=1``.

* ``classes=`` keeps, ``exclude=`` drops the listed classes (names, or integer label indices).
  Kept labels keep their ORIGINAL indices and ``class_names`` stays the full list, so a subset's
  labels still index the source's class list.
* ``holdout=N&part=fit|holdout`` splits the set in two before anything else: ``holdout=N`` holds out
  N images of EACH class (of the whole set when it has no labels), chosen by a fixed rule (a
  permutation of the set's positions with the fixed seed :data:`HOLDOUT_SEED`; a class's held-out
  images are its first N in that order), independent of ``seed`` and of ``classes=``/``exclude=``,
  so a class's held-out images are the same whichever classes a spec selects. ``part=holdout`` keeps
  the held-out images, ``part=fit`` the rest: disjoint, and together the whole set. Each key needs
  the other; every selected class must have more than N images. E.g. train on
  ``archive:c10.tgz!train?classes=cat&holdout=1000&part=fit`` and validate on
  ``archive:c10.tgz!train?exclude=cat&holdout=1000&part=holdout`` (never trained on).
* ``limit=N`` then keeps a random subset of N images drawn with ``seed`` (default 0); the kept
  images stay in source order. A limit at least the set size keeps everything.

The query starts at the first ``?`` (so paths containing ``?`` are not supported); for archives,
the subfolder starts at the last ``!``.
"""

from __future__ import annotations

import dataclasses
import os.path
import re
from collections.abc import Sequence

import numpy as np

from semsad_jax.errors import SemsadError

KINDS = ("tfds", "folder", "archive", "npz", "sklearn", "synthetic")
QUERY_KEYS = ("classes", "exclude", "holdout", "part", "limit", "seed")
PARTS = ("fit", "holdout")
HOLDOUT_SEED = 20_160_916  # fixed: the held-out images never depend on a spec's seed
SKLEARN_DATASETS = ("digits", "sample_images")
SYNTHETIC = ("noise", "constant", "blobs", "stripes", "checkerboard", "shapes", "text")
SKLEARN_SPLITS = ("train", "test")
_TFDS_NAME = re.compile(r"^[A-Za-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?$")
_EXAMPLES = "e.g. tfds:cifar10/train, folder:/data/imgs, archive:x.tar.gz!train, npz:x.npz"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed spec string.

    Attributes:
      kind: one of :data:`KINDS`.
      location: tfds dataset name (with optional ``/config`` and ``:version``), the filesystem path
        (``~`` expanded) for folder/archive/npz, or the scikit-learn dataset name.
      subdir: the tfds split (with slicing, e.g. ``train[:1000]``), the folder inside an archive
        ("" = whole archive), the sklearn split ("" = all), or "" for folder/npz.
      query: validated query parameters, key -> raw string value (keys from :data:`QUERY_KEYS`).
      text: the full spec string as given (stripped of surrounding whitespace).
    """

    kind: str
    location: str
    subdir: str = ""
    query: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    text: str = ""

    @property
    def split(self) -> str:
        """Alias of ``subdir`` for tfds / sklearn specs."""
        return self.subdir

    @property
    def classes(self) -> list[str] | None:
        return _split_list(self.query["classes"]) if "classes" in self.query else None

    @property
    def exclude(self) -> list[str] | None:
        return _split_list(self.query["exclude"]) if "exclude" in self.query else None

    @property
    def limit(self) -> int | None:
        return int(self.query["limit"]) if "limit" in self.query else None

    @property
    def holdout(self) -> int | None:
        return int(self.query["holdout"]) if "holdout" in self.query else None

    @property
    def part(self) -> str | None:
        return self.query.get("part")

    @property
    def seed(self) -> int:
        return int(self.query.get("seed", "0"))


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def _bad(spec: str, problem: str, fix: str = _EXAMPLES) -> SemsadError:
    return SemsadError(f"bad data spec {spec!r}: {problem}; {fix}")


def _parse_query(spec: str, query_text: str) -> dict[str, str]:
    fix = "the query looks like ?classes=cat,dog&exclude=frog&holdout=100&part=fit&limit=500&seed=0"
    query: dict[str, str] = {}
    for part in query_text.split("&"):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise _bad(spec, f"query part {part!r} is not key=value", fix)
        if key not in QUERY_KEYS:
            raise _bad(spec, f"unknown query key {key!r} (known: {', '.join(QUERY_KEYS)})", fix)
        if key in query:
            raise _bad(spec, f"query key {key!r} given twice", fix)
        if key in ("classes", "exclude"):
            if any(not item for item in _split_list(value)):
                raise _bad(spec, f"{key}= needs a comma-separated list of class names", fix)
        elif key == "part":
            if value not in PARTS:
                raise _bad(spec, f"part={value!r} is not one of {', '.join(PARTS)}", fix)
        elif not re.fullmatch(r"[0-9]+", value) or len(value) > 18:
            raise _bad(spec, f"{key}={value!r} is not an integer from 0 to 10^18", fix)
        elif key in ("limit", "holdout") and int(value) == 0:
            raise _bad(spec, f"{key}= must be a positive integer", fix)
        query[key] = value
    if ("holdout" in query) != ("part" in query):
        raise _bad(spec, "holdout=N and part=fit|holdout go together", fix)
    return query


def parse_spec(spec: str) -> Spec:
    """Parses a spec string into a :class:`Spec`; raises SemsadError on any malformed spec."""
    if not isinstance(spec, str):
        raise SemsadError(f"data spec must be a string, got {type(spec).__name__}; {_EXAMPLES}")
    text = spec.strip()
    if any(ch in text for ch in "\n\r\x00"):
        raise _bad(spec, "it contains a newline or NUL character")
    kind, colon, rest = text.partition(":")
    kind = kind.strip().lower()
    if not colon or kind not in KINDS:
        raise _bad(spec, f"unknown source kind {kind!r} (known: {', '.join(KINDS)})")
    rest, qmark, query_text = rest.partition("?")
    query = _parse_query(text, query_text) if qmark else {}
    rest = rest.strip()
    subdir = ""
    if kind == "tfds":
        name, slash, subdir = rest.rpartition("/")
        if not slash or not subdir.strip() or not _TFDS_NAME.match(name):
            raise _bad(text, "tfds sources are tfds:NAME/SPLIT", "e.g. tfds:cifar10/train")
        location, subdir = name, subdir.strip()
    elif kind == "sklearn":
        location, _, subdir = rest.partition("/")
        if location not in SKLEARN_DATASETS:
            raise _bad(
                text, f"unknown sklearn dataset {location!r}", "use sklearn:digits or sample_images"
            )
        if subdir and (location != "digits" or subdir not in SKLEARN_SPLITS):
            raise _bad(text, f"unknown split {subdir!r}", "use sklearn:digits[/train|/test]")
    elif kind == "synthetic":
        location = rest
        if location not in SYNTHETIC:
            raise _bad(text, f"unknown synthetic set {location!r}", f"use one of {SYNTHETIC}")
    else:
        location = rest
        if kind == "archive" and "!" in rest:
            location, _, subdir = rest.rpartition("!")
            subdir = "/".join(p for p in subdir.replace("\\", "/").split("/") if p not in ("", "."))
            if ".." in subdir.split("/"):
                raise _bad(text, "the archive subfolder must not contain '..'")
        location = location.strip()
        if not location:
            raise _bad(text, f"{kind} sources need a path", f"e.g. {kind}:/path/to/data")
        location = os.path.expanduser(location)
    return Spec(kind=kind, location=location, subdir=subdir, query=query, text=text)


def select_indices(
    spec: Spec, count: int, labels: np.ndarray | None, class_names: Sequence[str] | None
) -> np.ndarray | None:
    """Applies the spec's query to a list of ``count`` items.

    ``classes``/``exclude`` and the ``holdout``/``part`` split (drawn over all N items, whatever
    the classes) select; ``limit`` then draws from what they keep.

    Args:
      spec: parsed spec (its ``classes``, ``exclude``, ``holdout``, ``part``, ``limit``, ``seed``).
      count: N, the number of items.
      labels: int [N] labels, or None when the source has none (then ``classes``/``exclude`` are
        refused and ``holdout`` counts over the whole set).
      class_names: index -> name, or None (then classes are given as integer label values).

    Returns:
      int64 [M] sorted indices of the kept items, or None when the query keeps everything.
    """
    if not spec.query.keys() & {"classes", "exclude", "part", "limit"}:
        return None
    labels = None if labels is None else np.asarray(labels)
    keep = np.ones(count, dtype=bool)
    if spec.classes is not None or spec.exclude is not None:
        if labels is None:
            raise SemsadError(
                f"data spec {spec.text!r}: classes=/exclude= need labels, but this source has "
                "none; put the images in one subfolder per class, or drop classes=/exclude="
            )
        if spec.classes is not None:
            keep &= np.isin(labels, _class_indices(spec, spec.classes, labels, class_names))
        if spec.exclude is not None:
            keep &= ~np.isin(labels, _class_indices(spec, spec.exclude, labels, class_names))
    if spec.part is not None:
        _check_holdout(spec, count, labels, keep, class_names)
        held = holdout_mask(spec.holdout, count, labels)
        keep &= held if spec.part == "holdout" else ~held
    return _apply_limit(spec, np.flatnonzero(keep))


def holdout_mask(holdout: int, count: int, labels: np.ndarray | None) -> np.ndarray:
    """bool [count]: the items ``holdout=N`` holds out (N per label value, or N of all when None).

    The fixed rule: a permutation of ``range(count)`` drawn with :data:`HOLDOUT_SEED`; each class's
    held-out items are its first N in that order (all of it when it has N or fewer).
    """
    order = np.random.default_rng(HOLDOUT_SEED).permutation(count)
    held = np.zeros(count, dtype=bool)
    if labels is None:
        held[order[:holdout]] = True
        return held
    ordered = labels[order]
    for value in np.unique(ordered):
        held[order[ordered == value][:holdout]] = True
    return held


def _check_holdout(
    spec: Spec,
    count: int,
    labels: np.ndarray | None,
    keep: np.ndarray,
    class_names: Sequence[str] | None,
) -> None:
    """Every selected class (``keep``; the whole set when unlabelled) must have more than N items."""
    if labels is None:
        if count <= spec.holdout:
            raise SemsadError(
                f"data spec {spec.text!r}: holdout={spec.holdout} would hold out all {count} "
                f"images of the set; hold out fewer than {count}"
            )
        return
    sizes = np.bincount(labels)
    for value in np.unique(labels[keep]):
        if sizes[value] <= spec.holdout:
            name = class_names[value] if class_names is not None else str(value)
            raise SemsadError(
                f"data spec {spec.text!r}: holdout={spec.holdout} would hold out all "
                f"{sizes[value]} images of class {name!r}; hold out fewer than {sizes[value]}"
            )


def _apply_limit(spec: Spec, kept: np.ndarray) -> np.ndarray:
    if spec.limit is None or spec.limit >= len(kept):
        return kept.astype(np.int64)
    rng = np.random.default_rng(spec.seed)
    return np.sort(rng.choice(kept, size=spec.limit, replace=False)).astype(np.int64)


def _class_indices(
    spec: Spec, wanted: list[str], labels: np.ndarray, class_names: Sequence[str] | None
) -> list[int]:
    """Maps class names or integer indices to label indices; unknown ones -> SemsadError."""
    names = list(class_names) if class_names is not None else None
    present = sorted({int(v) for v in np.unique(labels)}) if names is None else None
    indices = []
    for item in wanted:
        if names is not None and item in names:
            indices.append(names.index(item))
        elif re.fullmatch(r"[0-9]{1,9}", item) and (
            int(item) < len(names) if names is not None else int(item) in present
        ):
            indices.append(int(item))
        else:
            shown = names if names is not None else [str(v) for v in present]
            listing = ", ".join(shown[:50]) + (", ..." if len(shown) > 50 else "")
            raise SemsadError(
                f"data spec {spec.text!r}: class {item!r} is not in this source; "
                f"available classes: {listing}"
            )
    return indices
