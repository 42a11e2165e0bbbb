"""A trained SemSAD detector for notebooks and scripts: restore once, score any images.

    from semsad_jax import Detector
    det = Detector.restore("runs/c10")       # reads runs/c10/config.json; no training data needed
    det = Detector.restore("cifar10_cpu")    # or a shipped detector, an archive or its URL
    scores = det.score(images_uint8)         # float32 [N], higher = more in-distribution
    knn = det.score(images_uint8, detector="knn")   # any detector of its eval run (DETECTORS)
    flags = det.is_ood(images_uint8)         # bool [N], at the 95% threshold stored by --mode=eval
    nn = det.nearest(images_uint8)           # nn.indices int32 [N, 1] into det.bank.images

The detectors: ``semsad`` (the paper's method) and the baselines its eval run scores beside it on
the same encoder and bank (``knn``, ``mahalanobis``; ``pixels_knn``, raw pixels, the floor), fitted
on the bank the first time one is asked for (:class:`~semsad_jax.evaluation.baselines.Floors`);
``rotation``, the rotation-prediction network's detector, where the config enables it
(``rotation.enabled``); ``combined`` (``eval.combined``), the lowest bank percentile of several of
them (:mod:`semsad_jax.evaluation.combine`). :attr:`Detector.names` lists those a detector has.

The score of an image x is s(r, x): the discriminator's score of the pair (reference r = the top-1
cosine neighbour of x among the training features, partner = x). With ``discriminator.norm`` "batch"
or "group" a score does not depend on the other images scored with it. With "batch_transductive"
(the authors' evaluation) the images are scored in consecutive batches of ``eval.batch_size`` that
normalise with their own statistics, so a score DOES depend on its batch: see :func:`bn_mode`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from semsad_jax.data.arrays import images_from_array
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.baselines import BASELINES, Floors
from semsad_jax.evaluation.combine import Combined
from semsad_jax.evaluation.others import DETECTORS, OtherDetectors, check_detector
from semsad_jax.method.features import compute_features
from semsad_jax.method.neighbours import top_k_cosine
from semsad_jax.method.scoring import discriminator_scores
from semsad_jax.models.build import compute_dtype
from semsad_jax.parallel.mesh import make_mesh
from semsad_jax.workdir.bank import load_bank
from semsad_jax.workdir.fetch import resolve_detector
from semsad_jax.workdir.layout import (
    ConfigView,
    Workdir,
    as_workdir,
    rotation_enabled,
    run_identities,
    trained_stages,
)
from semsad_jax.workdir.restore import check_bank_matches, restore_stage

log = logging.getLogger(__name__)
__all__ = ["DETECTORS", "Detector", "Neighbours", "bn_mode", "check_detector", "read_config"]
BN_MODES = {
    "batch": "running_stats",
    "group": "group_norm",
    "batch_transductive": "transductive (authors' evaluation)",
}


def bn_mode(config: Any) -> str:
    """How the discriminator normalises at test time, as recorded in every eval output."""
    norm = config.discriminator.norm
    if norm not in BN_MODES:
        raise SemsadError(f"unknown discriminator.norm {norm!r}; use one of {', '.join(BN_MODES)}.")
    return BN_MODES[norm]


def is_transductive(config: Any) -> bool:
    return config.discriminator.norm == "batch_transductive"


def read_config(workdir: str | Workdir) -> ConfigView:
    """The resolved config a workdir was trained with (WORKDIR/config.json)."""
    return as_workdir(workdir).config()


class Neighbours(NamedTuple):
    """Nearest training images: ``indices`` int32 [N, k] into the bank, ``similarities`` f32 [N, k]."""

    indices: np.ndarray
    similarities: np.ndarray


@dataclasses.dataclass
class Detector(OtherDetectors):
    """Encoder h, discriminator s and the training bank of one trained workdir.

    Attributes:
      config: the run's config (ConfigDict or :class:`ConfigView`).
      encoder: (graphdef, params, batch_stats) of h.
      discriminator: (graphdef, params, batch_stats) of s.
      bank: the training bank (``features`` f32 [N, D], ``images`` u8 [N, H, W, 3], ...).
      threshold: the stored semsad threshold (None before --mode=eval).
      thresholds: every detector's stored threshold ({} before --mode=eval).
      mesh: the device mesh everything runs on.
      workdir: where it was restored from (None when built by hand).
      provenance: per stage, what was restored (trained epochs and steps, the checkpoint step,
        the identity digest, the config's epochs; :class:`~semsad_jax.workdir.restore.RestoredNetwork`);
        empty when built by hand.
      rotation: (graphdef, params, batch_stats) of the rotation network, or None (not enabled).
    """

    config: Any
    encoder: tuple
    discriminator: tuple
    bank: Any
    threshold: float | None = None
    mesh: Mesh | None = None
    workdir: str | None = None
    provenance: dict = dataclasses.field(default_factory=dict)
    thresholds: dict = dataclasses.field(default_factory=dict)
    rotation: tuple | None = None
    _floors: Floors | None = dataclasses.field(default=None, repr=False)
    _combined: Combined | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def restore(
        cls, source: str | Workdir, *, mesh: Mesh | None = None, sha256: str | None = None
    ) -> Detector:
        """Restores a trained detector with its own config.json (Orbax checkpoints).

        ``source``: a workdir; a detector archive (``--mode=export``); its ``https://`` or
        ``file://`` URL (downloaded once into the cache, checked against ``sha256`` when given);
        or a shipped detector's name (``digits``, ``cifar10_cpu``; see ``pretrained/``).
        """
        if not isinstance(source, Workdir):
            source = resolve_detector(str(source), sha256=sha256)
        wd = as_workdir(source)
        return cls.from_workdir(wd.config(), wd, mesh=mesh)

    @classmethod
    def from_workdir(
        cls, config: Any, workdir: str | Workdir, *, mesh: Mesh | None = None
    ) -> Detector:
        """Restores encoder, discriminator and bank of ``workdir`` under ``config``."""
        wd = as_workdir(workdir)
        wd.check_trained(trained_stages(config))
        check_bank_matches(wd)
        mesh = mesh or make_mesh()
        identities = run_identities(config)
        restore = lambda stage: restore_stage(
            wd, stage, config[stage], identities[stage], dtype=config.dtype, mesh=mesh
        )
        encoder, discriminator = restore("encoder"), restore("discriminator")
        rotation = restore("rotation") if rotation_enabled(config) else None
        bank = load_bank(wd)
        provenance = {"encoder": encoder.provenance, "discriminator": discriminator.provenance}
        if rotation is not None:
            provenance["rotation"] = rotation.provenance
        results = wd.read(wd.results_json) or {}
        return cls(
            config,
            encoder[:3],
            discriminator[:3],
            bank,
            wd.threshold(),
            mesh,
            wd.path,
            provenance,
            {k: float(v) for k, v in results.get("threshold_95", {}).items()},
            None if rotation is None else rotation[:3],
        )

    def __post_init__(self) -> None:
        self.mesh = self.mesh or make_mesh()
        if self.threshold is not None:
            self.thresholds.setdefault("semsad", float(self.threshold))

    @property
    def image_size(self) -> int:
        """Side length of the images the detector was trained on."""
        return int(self.bank.images.shape[1])

    @property
    def bn_mode(self) -> str:
        return bn_mode(self.config)

    @property
    def _dtype(self):
        return compute_dtype(self.config.dtype)

    def check_images(self, images: Any, *, resize: bool = False) -> np.ndarray:
        """uint8 [N, S, S, 3] at the bank's size S; with ``resize`` any image array is converted.

        Without ``resize``, anything else is a SemsadError naming the expected shape.
        """
        if resize:
            return images_from_array(np.asarray(images), self.image_size)
        images = np.asarray(images)
        s = self.image_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise SemsadError(
                f"images are {images.dtype} {tuple(images.shape)} but the detector takes uint8 "
                f"[N, {s}, {s}, 3]; convert with semsad_jax.data.images_from_array(images, {s}) "
                "or pass resize=True."
            )
        if len(images) == 0:
            raise SemsadError("no images given; pass at least one image.")
        return images

    def features(
        self, images: Any, *, resize: bool = False, output: str | tuple[str, ...] = "head"
    ) -> Any:
        """L2-normalised encoder features (inference mode): uint8 images -> float32 [N, D].

        ``output``: "head" (h, what SemSAD's neighbour search uses) or "penultimate" (the pooled
        backbone features before the head, what the knn / mahalanobis baselines use by default),
        or a tuple of them (a tuple of arrays, from one forward pass).
        """
        images = self.check_images(images, resize=resize)
        graphdef, params, stats = self.encoder
        return compute_features(
            graphdef,
            params,
            stats,
            images,
            mesh=self.mesh,
            batch_size=int(self.config.eval.batch_size),
            dtype=self._dtype,
            output=output,
        )

    def nearest_features(self, features: np.ndarray, k: int = 1) -> Neighbours:
        """Top-``k`` cosine neighbours in the training bank of features [N, D]."""
        sims, idx = top_k_cosine(
            features, self.bank.features, int(k), normalized=True, mesh=self.mesh
        )
        return Neighbours(idx, sims)

    def nearest(self, images: Any, k: int = 1, *, resize: bool = False) -> Neighbours:
        """The ``k`` most similar training images of each image (indices into ``bank.images``)."""
        return self.nearest_features(self.features(images, resize=resize), k)

    def pair_scores(self, references: np.ndarray, partners: np.ndarray) -> np.ndarray:
        """s(reference, partner) for uint8 [N, H, W, 3] pairs -> float32 [N].

        Default norms: padded batches, each score independent of the batch. Transductive: consecutive
        groups of ``eval.batch_size`` pairs, each normalised with its own statistics (last group short).
        """
        graphdef, params, stats = self.discriminator
        batch = int(self.config.eval.batch_size)
        score = lambda refs, parts, mesh, size: discriminator_scores(
            graphdef, params, stats, refs, parts, mesh=mesh, batch_size=size, dtype=self._dtype
        )
        if not is_transductive(self.config):
            return score(references, partners, self.mesh, batch)
        out = []
        for start in range(0, len(partners), batch):
            refs, parts = references[start : start + batch], partners[start : start + batch]
            # A group that does not split evenly over the devices runs on one device, unpadded.
            mesh = self.mesh if len(parts) % self.mesh.devices.size == 0 else _one_device()
            out.append(score(refs, parts, mesh, len(parts)))
        return np.concatenate(out).astype(np.float32)

    def score_with_neighbours(
        self,
        images: Any,
        *,
        k: int = 1,
        resize: bool = False,
        features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Neighbours]:
        """(semsad scores f32 [N], h features f32 [N, D], top-``k`` neighbours) of the images.

        The score is s(r, x) with r the nearest training image by h (the paper), or, with
        ``eval.score_neighbours = m > 1`` (an extension), the mean of s(r_j, x) over the m nearest.
        ``features``: the images' h when already computed (``self.features(images)``), or None.
        """
        images = self.check_images(images, resize=resize)
        feats = self.features(images) if features is None else features
        m = int(self.config.eval.get("score_neighbours", 1))
        nn = self.nearest_features(feats, max(1, int(k), m))
        refs = self.bank.images[nn.indices[:, :m].reshape(-1)]
        scores = self.pair_scores(refs, np.repeat(images, m, axis=0)).reshape(len(images), m)
        if nn.indices.shape[1] > k:
            nn = Neighbours(nn.indices[:, :k], nn.similarities[:, :k])
        return scores.mean(axis=1).astype(np.float32), feats, nn

    def scores(
        self, images: Any, *, detectors: tuple[str, ...] | None = None, resize: bool = False
    ) -> dict[str, np.ndarray]:
        """{detector: float32 [N]} of each of ``detectors`` (default: all of :attr:`names`), plus
        "nn" (int32 [N]) and "nn_similarity" (float32 [N]): each image's nearest training image by
        h and its cosine. One encoder pass serves every detector."""
        images = self.check_images(images, resize=resize)
        detectors = self.names if detectors is None else tuple(detectors)
        for name in detectors:
            self._check_has(name)
        wanted = set(detectors)
        if "combined" in wanted:
            wanted |= set(self.combined_components)
        baselines = [d for d in BASELINES if d in wanted]
        kind = self.floors.features if baselines else "head"
        # h (the neighbours) and the baselines' features from one forward pass
        outputs = ("head",) if kind == "head" else ("head", kind)
        computed = self.features(images, output=outputs)
        out: dict[str, np.ndarray] = {}
        if "semsad" in wanted:
            out["semsad"], _, nn = self.score_with_neighbours(images, features=computed[0])
        else:
            nn = self.nearest_features(computed[0])
        if baselines:
            floors = self.floors.scores(images, computed[-1], mesh=self.mesh)
            out.update({d: floors[d] for d in baselines})
        if "rotation" in wanted:
            out["rotation"] = self.rotation_scores(images)
        if "combined" in wanted:
            out["combined"] = self.combined.scores(out)
        out = {d: out[d] for d in detectors}  # only what was asked for
        out["nn"], out["nn_similarity"] = nn.indices[:, 0], nn.similarities[:, 0]
        return out

    def score(self, images: Any, *, detector: str = "semsad", resize: bool = False) -> np.ndarray:
        """The ``detector``'s scores, float32 [N], higher = more in-distribution.

        ``semsad`` (default): s(nearest training image, image), averaged over
        ``eval.score_neighbours`` nearest training images when that is above 1; ``knn``,
        ``mahalanobis``, ``pixels_knn``: the baselines of the same encoder and bank; ``rotation``
        and ``combined`` where the detector has them (:attr:`names`).
        """
        if detector == "semsad":
            return self.score_with_neighbours(images, resize=resize)[0]
        return self.scores(images, detectors=(detector,), resize=resize)[detector]

    def threshold_of(self, detector: str = "semsad") -> float:
        """The ``detector``'s threshold stored by --mode=eval (keeps ``eval.tpr`` of the test set)."""
        if detector not in self.thresholds:
            self._check_has(detector)
            raise SemsadError(
                f"no stored {detector} threshold in {self.workdir}; run --mode=eval first (it "
                "writes eval/results.json with threshold_95)."
            )
        return self.thresholds[detector]

    def is_ood(self, images: Any, *, detector: str = "semsad", resize: bool = False) -> np.ndarray:
        """bool [N]: the ``detector``'s score below its stored threshold (which keeps ``eval.tpr``
        of the in-distribution test set)."""
        threshold = self.threshold_of(detector)
        return self.score(images, detector=detector, resize=resize) < threshold


def _one_device() -> Mesh:
    return make_mesh(jax.local_devices()[:1])
