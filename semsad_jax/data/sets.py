"""The one place that turns a ``data`` config section into loaded image sets.

:class:`DataSets` loads every spec at ``data.image_size`` with the section's cache and corrupt-image
policy, decodes each spec at most once per run (so ``--mode=all`` decodes the training and test
sets once), and mixes in ``data.contamination`` of outliers for the contaminated-training protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from semsad_jax.data.arrays import ImageSet
from semsad_jax.data.sources import load_images
from semsad_jax.errors import SemsadError

__all__ = ["DataSets", "contaminate"]

log = logging.getLogger(__name__)


def contaminate(clean: ImageSet, outliers: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Mixes outlier images into a clean set (the contaminated-training protocol).

    Adds ``round(fraction * N / (1 - fraction))`` images drawn without replacement from
    ``outliers`` to the N clean images, so that ``fraction`` of the result are outliers, then
    shuffles the union with ``seed``. ``is_outlier`` (bool [M]) marks the added images. The result
    has ``labels=None`` and ``class_names=None`` (outliers have no class of the clean set;
    monitors skip unlabelled sets); ids of outliers are prefixed with ``"outlier:"``.
    ``fraction == 0`` returns the clean set unshuffled with all-False ``is_outlier``.
    """
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise SemsadError(f"contamination fraction must be in [0, 1), got {fraction}")
    count = round(fraction * len(clean) / (1.0 - fraction))
    if count == 0:
        return dataclasses.replace(clean, is_outlier=np.zeros(len(clean), bool))
    if count > len(outliers):
        raise SemsadError(
            f"contamination {fraction} needs {count} outlier images but {outliers.spec!r} has "
            f"{len(outliers)}; lower the fraction or use a bigger outlier source"
        )
    if outliers.images.shape[1:] != clean.images.shape[1:]:
        raise SemsadError(
            f"outlier images {outliers.images.shape[1:]} differ from clean images "
            f"{clean.images.shape[1:]}; load both at the same image_size"
        )
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(outliers), size=count, replace=False))
    order = rng.permutation(len(clean) + count)
    images = np.concatenate([clean.images, outliers.images[picked]])[order]
    ids = [*clean.ids, *(f"outlier:{outliers.ids[i]}" for i in picked)]
    flags = np.concatenate([np.zeros(len(clean), bool), np.ones(count, bool)])[order]
    return ImageSet(
        images=images,
        labels=None,
        class_names=None,
        spec=f"{clean.spec} + {fraction:g} of {outliers.spec}",
        ids=[ids[i] for i in order],
        is_outlier=flags,
    )


class DataSets:
    """Loads the image sets of one ``data`` config section, each spec decoded once.

    Args:
      data: the ``data`` section (image_size, cache_dir, on_corrupt, train, test, contamination,
        contamination_source).
      seed: the run's seed (which outliers contaminate the training set, and their order).
    """

    def __init__(self, data: Any, seed: int = 0):
        self.cfg = data
        self.seed = int(seed)
        self._loaded: dict[str, ImageSet] = {}
        self._train: ImageSet | None = None

    def load(self, spec: str) -> ImageSet:
        """The images of ``spec`` at ``data.image_size`` (decoded on first use, then kept)."""
        if spec not in self._loaded:
            self._loaded[spec] = load_images(
                spec,
                int(self.cfg.image_size),
                cache_dir=self.cfg.cache_dir or None,
                on_corrupt=self.cfg.on_corrupt,
            )
        return self._loaded[spec]

    def train(self) -> ImageSet:
        """The training set, contaminated with ``data.contamination`` of outliers when configured."""
        if self._train is None:
            train = self.load(self.cfg.train)
            fraction = float(self.cfg.contamination)
            if fraction > 0:
                if not self.cfg.contamination_source:
                    raise SemsadError(
                        "data.contamination > 0 needs data.contamination_source (a spec)."
                    )
                outliers = self.load(self.cfg.contamination_source)
                train = contaminate(train, outliers, fraction, self.seed)
            self._train = train
        return self._train

    def test(self) -> ImageSet | None:
        """The labelled held-out set ``data.test`` (monitors, held-out pairs), or None if unset."""
        return self.load(self.cfg.test) if self.cfg.test else None
