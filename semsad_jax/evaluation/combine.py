"""The ``combined`` detector: an image is as typical as its least typical component says.

Each component detector (``eval.combined``, e.g. "mahalanobis,pixels_knn": a semantic and a
low-level one) turns its score into an in-distribution percentile: the fraction of reference scores
below it, the reference being the component's scores of ``eval.combined_reference`` random images of
the training bank (knn, pixels_knn and semsad leave the image itself out: its k-th neighbour among the
others, s(nearest other bank image, image); mahalanobis and rotation score the bank images as they
are). The combined score is the
lowest of the percentiles, reported as its logarithm, so an image far outside the training set
under EITHER view scores low. Outside the reference's range a percentile continues below 0.5/n
(above 1 - 0.5/n) with exp(-distance / spread) (spread = the reference's interquartile range), so
images further out still rank lower and no two distinct scores tie (the logarithm keeps them apart
where the percentile itself would underflow). Higher = more in-distribution, like every detector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from semsad_jax.errors import SemsadError

__all__ = ["COMPONENTS", "Combined", "parse_components", "percentiles"]

# What may be combined (semsad's reference pairs a bank image with its nearest other bank image).
COMPONENTS = ("semsad", "knn", "mahalanobis", "pixels_knn", "rotation")


def parse_components(text: str | tuple | list) -> tuple[str, ...]:
    """``"mahalanobis,pixels_knn"`` (or a tuple) -> the component names; () for ""."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(n.strip() for n in names if str(n).strip())
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown or len(set(names)) != len(names) or len(names) == 1:
        raise SemsadError(
            f"eval.combined={text!r}: name two or more distinct detectors of "
            f"{', '.join(COMPONENTS)} (e.g. 'mahalanobis,pixels_knn'), or '' for none."
        )
    return names


def percentiles(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The logarithms (float64 [N]) of the mid-rank percentiles of ``scores`` among the
    ``reference`` scores, continued strictly monotonically beyond the reference's range (module
    doc)."""
    ref = np.sort(np.asarray(reference, np.float64))
    s = np.asarray(scores, np.float64)
    n = len(ref)
    if n < 2:
        raise SemsadError("the combined detector needs at least 2 reference scores.")
    mid = (np.searchsorted(ref, s, "left") + np.searchsorted(ref, s, "right")) / (2.0 * n)
    spread = max(float(np.subtract(*np.percentile(ref, [75, 25]))), 1e-12)
    tail = 0.5 / n
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        below = np.log(tail) - (ref[0] - s) / spread
        above = np.log1p(-tail * np.exp(-np.maximum(s - ref[-1], 0.0) / spread))
        inside = np.log(np.maximum(mid, tail))
    return np.where(s < ref[0], below, np.where(s > ref[-1], above, inside))


@dataclasses.dataclass(frozen=True)
class Combined:
    """The fitted combined detector: {component: reference scores} of the training bank."""

    references: dict[str, np.ndarray]

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.references)

    @classmethod
    def fit(
        cls,
        components: tuple[str, ...],
        reference: Callable[[str], np.ndarray],
    ) -> Combined:
        """``reference(name)``: the component's scores of the reference bank images."""
        return cls({name: np.asarray(reference(name), np.float64) for name in components})

    def scores(self, component_scores: dict[str, np.ndarray]) -> np.ndarray:
        """float32 [N]: the log of the lowest percentile over the components of their scores [N]."""
        per = [percentiles(ref, component_scores[name]) for name, ref in self.references.items()]
        return np.min(np.stack(per), axis=0).astype(np.float32)
