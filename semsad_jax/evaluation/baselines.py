"""Label-free baselines on the SAME encoder's features, scored in the same eval run as SemSAD.

Both follow this package's convention: a HIGHER score means MORE in-distribution.

* ``knn`` (Sun et al. 2022, "KNN"): cosine similarity of a test image's feature to its k-th nearest
  training feature (k = ``eval.knn_k``, default 1), searched exactly on the device.
* ``mahalanobis`` (SSD, Sehwag et al. 2021, without labels): one Gaussian (or one per k-means cluster)
  fitted to the L2-normalised training-bank features; score = minus the Mahalanobis distance to the
  nearest cluster. The precision matrix is the pseudo-inverse of the (biased) covariance, optionally
  shrunk towards a scaled identity first (``eval.mahalanobis_shrinkage``; 0 = SSD's plain pinv).
  Eigenvalues below ``PINV_RTOL`` x the largest count as zero: numpy's default cut-off (about 1e-14)
  keeps rounding-noise directions, which dominate the distance when the bank has fewer images than
  feature dimensions or the features fill only a subspace.
* ``pixels_knn``: the floor every learned detector must beat. Cosine similarity of a test image's raw
  pixels (uint8 / 255, flattened; optionally minus the mean training image) to its k-th nearest
  training image. No learning at all.

Both learned baselines use the SAME encoder as SemSAD; by default its penultimate (pooled backbone)
features, as SSD and KNN do (``eval.baseline_features="head"``: the 128-d projection h).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.method.neighbours import l2_normalize, top_k_cosine

__all__ = [
    "BASELINES",
    "Floors",
    "Gaussians",
    "PixelBank",
    "fit_mahalanobis",
    "knn_scores",
    "mahalanobis_scores",
    "pixel_knn_scores",
]
PINV_RTOL = 1e-6
BASELINES = ("knn", "mahalanobis", "pixels_knn")


def knn_scores(
    queries: np.ndarray, bank: np.ndarray, k: int = 1, *, mesh: Mesh | None = None
) -> np.ndarray:
    """Cosine similarity of each query to its ``k``-th nearest bank row.

    Args:
      queries: float [Q, D] features (any norm; cosine is used).
      bank: float [N, D] training features.
      k: 1 <= k <= N.
    Returns:
      float32 [Q]; higher = more in-distribution.
    """
    sims, _ = top_k_cosine(queries, bank, int(k), mesh=mesh)
    return sims[:, int(k) - 1]


@dataclasses.dataclass(frozen=True)
class Gaussians:
    """Fitted Mahalanobis model.

    Attributes:
      means: float64 [C, D] cluster means (C = 1 for the single-Gaussian SSD baseline).
      precisions: float64 [C, D, D] pseudo-inverses of the (shrunk) cluster covariances.
    """

    means: np.ndarray
    precisions: np.ndarray


def _normalized(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or len(features) == 0:
        raise SemsadError(f"features have shape {features.shape}; pass a non-empty [N, D] array.")
    return np.asarray(l2_normalize(features), dtype=np.float64)


def fit_mahalanobis(
    bank: np.ndarray, *, clusters: int = 1, shrinkage: float = 0.0, seed: int = 0
) -> Gaussians:
    """Fits the SSD Gaussian(s) to training features.

    Args:
      bank: float [N, D] training features (L2-normalised here, as SSD does).
      clusters: 1 = one Gaussian; > 1 = k-means (scikit-learn, ``seed``) and one Gaussian per cluster.
      shrinkage: alpha in [0, 1]; covariance (1 - alpha) S + alpha tr(S)/D I before the pinv.
    Returns:
      :class:`Gaussians` with float64 means [C, D] and precisions [C, D, D].
    """
    feats = _normalized(bank)
    if not 0.0 <= shrinkage <= 1.0:
        raise SemsadError(f"eval.mahalanobis_shrinkage={shrinkage} is outside [0, 1]; use e.g. 0.")
    if not 1 <= int(clusters) <= len(feats):
        raise SemsadError(
            f"eval.mahalanobis_clusters={clusters} is out of range for {len(feats)} training "
            "features; use 1 (one Gaussian) or a few clusters."
        )
    if int(clusters) == 1:
        assignment = np.zeros(len(feats), np.int64)
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=int(clusters), n_init=10, random_state=seed).fit(feats)
        assignment = km.labels_
    means, precisions = [], []
    dim = feats.shape[1]
    for c in range(int(clusters)):
        members = feats[assignment == c]
        mean = members.mean(axis=0)
        centred = members - mean
        cov = centred.T @ centred / len(members)
        if shrinkage:
            cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / dim) * np.eye(dim)
        means.append(mean)
        precisions.append(np.linalg.pinv(cov, rcond=PINV_RTOL, hermitian=True))
    return Gaussians(np.stack(means), np.stack(precisions))


def mahalanobis_scores(model: Gaussians, features: np.ndarray) -> np.ndarray:
    """Minus the Mahalanobis distance of each (L2-normalised) feature to its nearest cluster.

    Args:
      features: float [Q, D].
    Returns:
      float32 [Q]; higher = more in-distribution.
    """
    feats = _normalized(features)
    if feats.shape[1] != model.means.shape[1]:
        raise SemsadError(
            f"features have dimension {feats.shape[1]} but the Gaussians {model.means.shape[1]}; "
            "use features from the same encoder."
        )
    squared = []
    for mean, precision in zip(model.means, model.precisions):
        centred = feats - mean
        squared.append(np.einsum("qd,de,qe->q", centred, precision, centred))
    distance = np.sqrt(np.maximum(np.min(np.stack(squared), axis=0), 0.0))
    return (-distance).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PixelBank:
    """Training images as pixel vectors for :func:`pixel_knn_scores`.

    Attributes:
      vectors: float32 [N, H*W*C], pixels in [0, 1], minus ``mean`` when centred.
      mean: float32 [H*W*C], the mean training image, or None (not centred).
    """

    vectors: np.ndarray
    mean: np.ndarray | None

    @classmethod
    def from_images(cls, images_u8: np.ndarray, *, centre: bool = False) -> PixelBank:
        vectors = _pixels(images_u8)
        mean = vectors.mean(axis=0) if centre else None
        return cls(vectors - mean if centre else vectors, mean)

    def queries(self, images_u8: np.ndarray) -> np.ndarray:
        vectors = _pixels(images_u8)
        if vectors.shape[1] != self.vectors.shape[1]:
            raise SemsadError(
                f"images have {vectors.shape[1]} values each but the training images "
                f"{self.vectors.shape[1]}; load both at the same image size."
            )
        return vectors if self.mean is None else vectors - self.mean


def _pixels(images_u8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_u8)
    if images.ndim < 2 or len(images) == 0:
        raise SemsadError(f"images have shape {images.shape}; pass a non-empty [N, H, W, C] batch.")
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def pixel_knn_scores(
    images_u8: np.ndarray, bank: PixelBank, k: int = 1, *, mesh: Mesh | None = None
) -> np.ndarray:
    """Cosine similarity of each image's pixels to its ``k``-th nearest training image: f32 [Q].

    Higher = more in-distribution. A constant (zero-norm after centring) image scores 0.
    """
    return knn_scores(bank.queries(images_u8), bank.vectors, k, mesh=mesh)


@dataclasses.dataclass
class Floors:
    """The baselines of one detector, fitted once on its training bank.

    Attributes:
      features: "penultimate" or "head" (``eval.baseline_features``); train: those features of the
      bank, L2-normalised; gaussians: the fitted Mahalanobis model; pixels: the bank's pixel vectors;
      knn_k: k of knn and pixels_knn.
    """

    features: str
    train: np.ndarray
    gaussians: Gaussians
    pixels: PixelBank
    knn_k: int

    @classmethod
    def fit(
        cls,
        bank: Any,
        embed: Callable[[np.ndarray, str], np.ndarray],
        section: Any,
        seed: int,
    ) -> Floors:
        """From the ``eval`` config section and a training bank (``features``, ``images``).

        ``embed(images, kind)``: the encoder's L2-normalised ``kind`` features of uint8 images.
        """
        kind = str(section.baseline_features)
        if kind not in ("penultimate", "head"):
            raise SemsadError(
                f"unknown eval.baseline_features {kind!r}; use 'penultimate' or 'head'."
            )
        knn_k = int(section.knn_k)
        if not 1 <= knn_k <= len(bank.features):
            raise SemsadError(
                f"eval.knn_k={knn_k} is out of range for {len(bank.features)} training images."
            )
        train = bank.features if kind == "head" else embed(bank.images, kind)
        gaussians = fit_mahalanobis(
            train,
            clusters=int(section.mahalanobis_clusters),
            shrinkage=float(section.mahalanobis_shrinkage),
            seed=seed,
        )
        pixels = PixelBank.from_images(bank.images, centre=bool(section.pixels_centre))
        return cls(kind, train, gaussians, pixels, knn_k)

    def scores(
        self, images_u8: np.ndarray, features: np.ndarray, *, mesh: Mesh | None = None
    ) -> dict[str, np.ndarray]:
        """{baseline: f32 [N]} of images (uint8) and their ``self.features`` features [N, D]."""
        k = self.knn_k
        return {
            "knn": knn_scores(features, self.train, k, mesh=mesh),
            "mahalanobis": mahalanobis_scores(self.gaussians, features),
            "pixels_knn": pixel_knn_scores(images_u8, self.pixels, k, mesh=mesh),
        }
