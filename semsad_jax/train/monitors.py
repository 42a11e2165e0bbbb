"""What the training stages report about the networks they train (labels only used here).

* Encoder: weighted kNN classification accuracy of h on the labelled held-out set, next to the same
  classifier on raw pixels (the floor an encoder must beat), :mod:`semsad_jax.method.knn`.
* Discriminator: scores of held-out positive vs negative pairs, sampled from the held-out images as
  in training (neighbourhoods by the encoder's features among the held-out images).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.data.arrays import ImageSet
from semsad_jax.method.features import compute_features
from semsad_jax.method.knn import pixel_knn_accuracy, weighted_knn_accuracy
from semsad_jax.method.metrics import ood_metrics
from semsad_jax.method.neighbours import semantic_neighbourhoods
from semsad_jax.method.pairs import pair_settings
from semsad_jax.method.scoring import sampled_pair_scores

__all__ = ["heldout_report", "knn_report", "pixel_floor"]

HELDOUT_MAX_BATCHES = 16  # The held-out report scores at most this many batches of pairs.
HELDOUT_KEY = 6  # fold_in(seed, 6) keys the held-out pairs (training uses 1 to 5).


def _labelled(train: ImageSet, test: ImageSet | None) -> bool:
    return test is not None and train.labels is not None and test.labels is not None


def knn_report(
    graphdef: nnx.GraphDef,
    state: dict,
    train: ImageSet,
    test: ImageSet | None,
    section: Any,
    *,
    batch_size: int,
    dtype: Any,
    mesh: Mesh,
) -> dict:
    """{"knn_accuracy", "knn_accuracy_penultimate"}: weighted kNN (cosine, k = ``section.knn_k``)
    of the test images against the training images, on h (the head, what SemSAD's neighbours use)
    and on the pooled backbone features (what the knn / mahalanobis baselines and SimCLR-style
    evaluations use).

    ``section``: the ``encoder`` config section; {} when either set has no labels.
    """
    if not _labelled(train, test):
        return {}
    feats = lambda images: compute_features(  # (h, backbone) from one forward pass
        graphdef,
        state["params"],
        state["batch_stats"],
        images,
        mesh=mesh,
        batch_size=batch_size,
        dtype=dtype,
        output=("head", "penultimate"),
    )
    keys = ("knn_accuracy", "knn_accuracy_penultimate")
    out = {}
    for key, train_feats, test_feats in zip(keys, feats(train.images), feats(test.images)):
        out[key] = float(
            weighted_knn_accuracy(
                train_feats,
                train.labels,
                test_feats,
                test.labels,
                k=int(section.knn_k),
                temperature=float(section.knn_temperature),
            )
        )
    return out


def pixel_floor(train: ImageSet, test: ImageSet | None, section: Any) -> dict:
    """{"pixel_knn_accuracy"}: the same kNN classifier on raw (mean-centred) pixels, or {}."""
    if not _labelled(train, test):
        return {}
    acc = pixel_knn_accuracy(
        train.images,
        train.labels,
        test.images,
        test.labels,
        k=int(section.knn_k),
        temperature=float(section.knn_temperature),
    )
    return {"pixel_knn_accuracy": float(acc)}


def heldout_report(
    graphdef: nnx.GraphDef,
    state: dict,
    encoder: tuple,
    test: ImageSet | None,
    section: Any,
    *,
    seed: int,
    dtype: Any,
    mesh: Mesh,
) -> dict:
    """Pair scores of the trained discriminator on held-out positive vs negative pairs.

    Pairs are sampled from ``test`` as in training (:func:`method.pairs.sample_pairs`,
    neighbourhoods among the test images by the encoder's features), in up to HELDOUT_MAX_BATCHES
    batches of ``section.batch_size``, scored in inference mode (positives and negatives in separate
    passes, which matters only for the transductive norm).

    Args:
      state: {"params", "batch_stats"} of the discriminator; encoder: (graphdef, params, stats);
      section: the ``discriminator`` config section.
    Returns:
      heldout_mean_s_pos, heldout_mean_s_neg (floats), heldout_pair_auroc (positives ranked above
      negatives), heldout_pairs (count); {} without a test set or with fewer test images than
      devices.
    """
    ndev = mesh.devices.size
    batch = min(int(section.batch_size), len(test) if test is not None else 0) // ndev * ndev
    if test is None or batch < 2:
        return {}
    feats = compute_features(
        *encoder, test.images, mesh=mesh, batch_size=int(section.feature_batch_size), dtype=dtype
    )
    k = min(int(section.neighbours), len(test) - 1)
    neighbours = semantic_neighbourhoods(feats, k, normalized=True, mesh=mesh)
    images, neighbours = parallel.replicate((test.images, neighbours), mesh)
    key = jax.random.fold_in(jax.random.key(int(seed)), HELDOUT_KEY)
    order = np.random.default_rng(int(seed)).permutation(len(test)).astype(np.int32)
    settings = pair_settings(section)
    pos, neg = [], []
    for b in range(min(len(test) // batch, HELDOUT_MAX_BATCHES)):
        idx = parallel.replicate(order[b * batch : (b + 1) * batch], mesh)
        p, n = sampled_pair_scores(
            graphdef,
            settings,
            dtype,
            state["params"],
            state["batch_stats"],
            images,
            neighbours,
            idx,
            jax.random.fold_in(key, b),
        )
        pos.append(np.asarray(p))
        neg.append(np.asarray(n))
    pos, neg = np.concatenate(pos), np.concatenate(neg)
    return {
        "heldout_mean_s_pos": float(pos.mean()),
        "heldout_mean_s_neg": float(neg.mean()),
        "heldout_pair_auroc": float(ood_metrics(pos, neg)["auroc"]),
        "heldout_pairs": int(pos.size),
    }
