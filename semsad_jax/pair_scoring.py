"""Discriminator scores s(reference, partner) in inference mode, and the held-out pair report.

The discriminator's input is the two images stacked on channels, order (reference, partner)
(:func:`pairs.stack_pair`); its score is :func:`losses.pair_score` of the logits (the sum over its
outputs). With ``norm="batch_transductive"`` BatchNorm uses the statistics of the current batch even
at inference, so a score depends on the rest of its batch (the authors' evaluation); with ``batch``
(running statistics) and ``group`` it does not.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.augment import to_float
from semsad_jax.data import ImageSet
from semsad_jax.features import compute_features, map_batched
from semsad_jax.losses import pair_score
from semsad_jax.metrics import ood_metrics
from semsad_jax.neighbors import semantic_neighbourhoods
from semsad_jax.pairs import PairSettings, pair_settings, sample_pairs, stack_pair
from semsad_jax.train_encoder import compute_dtype

HELDOUT_MAX_BATCHES = 16  # The held-out report scores at most this many batches of pairs.
HELDOUT_KEY = 6  # fold_in(seed, 6) keys the held-out pairs (training uses 3, 4, 5).


def forward_pairs(model: nnx.Module, pos: jax.Array, neg: jax.Array, two_passes: bool):
    """Logits [B, K] of positive and negative inputs [B, H, W, 6]: one pass, or two (transductive)."""
    if two_passes:
        return model(pos), model(neg)
    out = model(jnp.concatenate([pos, neg]))
    return out[: pos.shape[0]], out[pos.shape[0] :]


@partial(jax.jit, static_argnames=("graphdef", "dtype"))
def _score(graphdef, params, batch_stats, refs, partners, dtype):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    return pair_score(model(stack_pair(to_float(refs, dtype), to_float(partners, dtype))))


def discriminator_scores(
    graphdef: nnx.GraphDef,
    params: dict,
    batch_stats: dict,
    refs_u8: np.ndarray,
    partners_u8: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int = 500,
    dtype: Any = jnp.float32,
) -> np.ndarray:
    """Pair scores s(reference, partner) in inference mode: float32 [N].

    Args:
      refs_u8, partners_u8: uint8 [N, H, W, 3] (at evaluation: the training neighbour, then the
        test image). Scored in padded batches of ``batch_size`` sharded over ``mesh``
        (:func:`features.map_batched`).
    """
    fn = lambda refs, partners: _score(graphdef, params, batch_stats, refs, partners, dtype)
    out = map_batched(fn, (refs_u8, partners_u8), mesh=mesh, batch_size=batch_size)
    return np.asarray(out, np.float32).reshape(len(refs_u8))


@partial(jax.jit, static_argnames=("graphdef", "settings", "dtype"))
def _heldout_scores(graphdef, settings: PairSettings, dtype, params, stats, images, nbrs, idx, key):
    pairs = sample_pairs(key, images, nbrs, idx, settings, dtype)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    pos = stack_pair(pairs["ref_pos"], pairs["partner_pos"])
    neg = stack_pair(pairs["ref_neg"], pairs["partner_neg"])
    s_pos, s_neg = forward_pairs(model, pos, neg, two_passes=True)
    return pair_score(s_pos), pair_score(s_neg)


def heldout_report(
    graphdef: nnx.GraphDef,
    state: dict,
    encoder: tuple,
    test: ImageSet | None,
    config: Any,
    mesh: Mesh,
) -> dict:
    """Pair scores of the trained discriminator on held-out positive vs negative pairs.

    Pairs are sampled from ``test`` as in training (:func:`pairs.sample_pairs`, neighbourhoods
    among the test images by the encoder's features), in up to HELDOUT_MAX_BATCHES batches of
    ``discriminator.batch_size``, scored in inference mode (positives and negatives in separate
    passes, which matters only for the transductive norm).

    Args:
      state: {"params", "batch_stats"} of the discriminator; encoder: (graphdef, params, stats).
    Returns:
      heldout_mean_s_pos, heldout_mean_s_neg (floats), heldout_pair_auroc (positives ranked above
      negatives), heldout_pairs (count); {} without a test set or with fewer test images than
      devices.
    """
    s = config.discriminator
    ndev = mesh.devices.size
    batch = min(int(s.batch_size), len(test) if test is not None else 0) // ndev * ndev
    if test is None or batch < 2:
        return {}
    dtype = compute_dtype(config)
    feats = compute_features(
        *encoder, test.images, mesh=mesh, batch_size=int(s.feature_batch_size), dtype=dtype
    )
    k = min(int(s.neighbours), len(test) - 1)
    neighbours = semantic_neighbourhoods(feats, k, normalized=True, mesh=mesh)
    images, neighbours = parallel.replicate((test.images, neighbours), mesh)
    key = jax.random.fold_in(jax.random.key(int(config.seed)), HELDOUT_KEY)
    order = np.random.default_rng(int(config.seed)).permutation(len(test)).astype(np.int32)
    pos, neg = [], []
    for b in range(min(len(test) // batch, HELDOUT_MAX_BATCHES)):
        idx = parallel.replicate(order[b * batch : (b + 1) * batch], mesh)
        p, n = _heldout_scores(
            graphdef,
            pair_settings(s),
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
