"""The detectors a :class:`~semsad_jax.evaluation.detector.Detector` scores beside SemSAD.

On the same restored workdir: the baselines of the encoder and bank (``knn``, ``mahalanobis``,
``pixels_knn``; :class:`~semsad_jax.evaluation.baselines.Floors`), the rotation network's detector
(``rotation``, with ``rotation.enabled``; :func:`semsad_jax.method.scoring.transform_scores`) and
``combined`` (``eval.combined``; :mod:`semsad_jax.evaluation.combine`: semsad's own reference
scores pair each bank image with its nearest OTHER bank images). :class:`OtherDetectors` is
the Detector's part that knows which of them it has and fits them on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.baselines import (
    BASELINES,
    Floors,
    knn_scores,
    mahalanobis_scores,
    pixel_knn_scores,
)
from semsad_jax.evaluation.combine import Combined, parse_components
from semsad_jax.method.scoring import transform_scores

__all__ = ["DETECTORS", "OtherDetectors", "check_detector"]

# Every detector the package knows; a Detector has those of :attr:`OtherDetectors.names`.
DETECTORS = ("semsad", *BASELINES, "rotation", "combined")


def check_detector(name: str) -> str:
    """``name`` if it is one of :data:`DETECTORS`; a one-line SemsadError listing them otherwise."""
    if name not in DETECTORS:
        raise SemsadError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}.")
    return name


class OtherDetectors:
    """Mixed into :class:`~semsad_jax.evaluation.detector.Detector` (which holds ``config``,
    ``bank``, ``rotation``, ``mesh``, ``workdir``, ``features`` and the caches ``_floors``,
    ``_combined``)."""

    @property
    def names(self) -> tuple[str, ...]:
        """The detectors this one scores, in :data:`DETECTORS` order: semsad and the baselines,
        rotation with a rotation network, combined when ``eval.combined`` names components it has."""
        have = ["semsad", *BASELINES] + (["rotation"] if self.rotation is not None else [])
        if set(self.combined_components) <= set(have) and self.combined_components:
            have.append("combined")
        return tuple(have)

    @property
    def combined_components(self) -> tuple[str, ...]:
        """The components of the ``combined`` detector (``eval.combined``; () = none)."""
        return parse_components(self.config.eval.get("combined", ""))

    def _check_has(self, name: str) -> None:
        check_detector(name)
        if name in self.names:
            return
        if name == "rotation":
            raise SemsadError(
                f"this detector ({self.workdir or 'built by hand'}) has no rotation network; train "
                "one with --config.rotation.enabled=True --mode=rotation (then --mode=eval)."
            )
        raise SemsadError(
            f"this detector has no combined detector: eval.combined={self.config.eval.get('combined', '')!r} "
            f"names no detectors it has ({', '.join(self.names)}); set --config.eval.combined=A,B."
        )

    def rotation_scores(self, images: Any, *, resize: bool = False) -> np.ndarray:
        """The rotation detector's scores, float32 [N]: mean log p(t | t(x)) over the
        transformations t of ``rotation.transforms`` (higher = more in-distribution)."""
        self._check_has("rotation")
        images = self.check_images(images, resize=resize)
        kind = str(self.config.rotation.transforms)
        scores, _ = transform_scores(
            *self.rotation,
            images,
            kind,
            mesh=self.mesh,
            inputs_per_call=4 * int(self.config.eval.batch_size),  # eval.batch_size rotated 4 ways
            dtype=self._dtype,
        )
        return scores

    @property
    def combined(self) -> Combined:
        """The combined detector, fitted on ``eval.combined_reference`` bank images on first use."""
        self._check_has("combined")
        if self._combined is None:
            self._combined = Combined.fit(self.combined_components, self._reference_scores())
        return self._combined

    def _reference_scores(self):
        """``name -> scores`` of the reference bank images (knn types leave the image out)."""
        bank, floors = self.bank, self.floors
        count = min(int(self.config.eval.get("combined_reference", 2000)), len(bank.images))
        rng = np.random.default_rng(int(self.config.seed))
        idx = np.sort(rng.choice(len(bank.images), count, replace=False))
        k = floors.knn_k + 1  # the nearest bank image of a bank image is itself

        def reference(name: str) -> np.ndarray:
            if name == "knn":
                return knn_scores(floors.train[idx], floors.train, k, mesh=self.mesh)
            if name == "pixels_knn":
                return pixel_knn_scores(bank.images[idx], floors.pixels, k, mesh=self.mesh)
            if name == "mahalanobis":
                return mahalanobis_scores(floors.gaussians, floors.train[idx])
            if name == "semsad":  # s(r, x) with r x's nearest OTHER bank images by h
                m = max(1, int(self.config.eval.get("score_neighbours", 1)))
                nn = self.nearest_features(bank.features[idx], m + 1).indices[:, 1:]
                partners = np.repeat(bank.images[idx], m, axis=0)
                s = self.pair_scores(bank.images[nn.reshape(-1)], partners)
                return s.reshape(len(idx), m).mean(axis=1)
            return self.rotation_scores(bank.images[idx])

        return reference

    @property
    def floors(self) -> Floors:
        """The baselines (knn, mahalanobis, pixels_knn), fitted on the bank on first use."""
        if self._floors is None:
            embed = lambda images, kind: self.features(images, output=kind)
            self._floors = Floors.fit(self.bank, embed, self.config.eval, int(self.config.seed))
        return self._floors
