"""The detectors that ship with semsad-jax, by name (``Detector.restore("digits")``).

Each name maps to a detector archive (:mod:`semsad_jax.workdir.archive`), its sha256 and a one-line
description. :func:`semsad_jax.workdir.fetch.resolve_detector` finds a name's archive at

1. ``pretrained/<file>`` of the source checkout (the repository root is the parent of the
   ``semsad_jax`` package directory), when it exists;
2. else ``<base URL>/<file>``, the base URL being ``$SEMSAD_PRETRAINED_URL`` or
   :data:`DEFAULT_BASE_URL`;

and checks it against the sha256 recorded here (``None``: not recorded yet, so not verified).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from semsad_jax.errors import SemsadError

__all__ = [
    "DEFAULT_BASE_URL",
    "SHIPPED",
    "ShippedDetector",
    "base_url",
    "local_archive",
    "shipped_detector",
    "shipped_names",
    "shipped_url",
]

DEFAULT_BASE_URL = "https://github.com/semsad-jax/semsad-jax/raw/main/pretrained"
BASE_URL_ENV = "SEMSAD_PRETRAINED_URL"


class ShippedDetector(NamedTuple):
    """A shipped detector: its archive's file name, sha256 (None = not verified) and description."""

    file: str
    sha256: str | None
    description: str


# The archives and cards are made by scripts/pretrained.py, which prints the sha256 to record here.
SHIPPED: dict[str, ShippedDetector] = {
    "digits": ShippedDetector(
        "digits.tar.gz",
        "8e8301117a56862d0f2d109272124d90be2b8de5a723969cd49f32a1aa677fbd",
        "scikit-learn digits 0-4 at 16 px (configs/digits.py); OOD = digits 5-9; CPU minutes",
    ),
    "cifar10_cpu": ShippedDetector(
        "cifar10_cpu.tar.gz",
        "8ff4b654da2327e9d2c918a039021a1c0b732bd53c513a9f01a45463815dbc9a",
        "CIFAR-10, all ten classes, 16 px, width-16 ResNet-18s (configs/cifar10_cpu.py)",
    ),
}


def shipped_names() -> tuple[str, ...]:
    """The names of the shipped detectors."""
    return tuple(SHIPPED)


def shipped_detector(name: str) -> ShippedDetector:
    """The registry entry of ``name``; a one-line SemsadError listing the names otherwise."""
    if name not in SHIPPED:
        raise SemsadError(
            f"no shipped detector {name!r}; use one of {', '.join(shipped_names())}, a trained "
            "workdir, a detector archive or its URL."
        )
    return SHIPPED[name]


def repository_root() -> str:
    """The parent of the ``semsad_jax`` package directory (a checkout's root)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def local_archive(name: str) -> str | None:
    """``pretrained/<file>`` of the source checkout when it exists, else None."""
    path = os.path.join(repository_root(), "pretrained", shipped_detector(name).file)
    return path if os.path.isfile(path) else None


def base_url() -> str:
    """``$SEMSAD_PRETRAINED_URL`` or :data:`DEFAULT_BASE_URL`, without a trailing slash."""
    return (os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")


def shipped_url(name: str) -> str:
    """Where ``name``'s archive is downloaded from: ``<base URL>/<file>``."""
    return f"{base_url()}/{shipped_detector(name).file}"
