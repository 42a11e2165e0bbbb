"""Discriminator scores s(reference, partner) in inference mode, for any pairs of uint8 images, and
the rotation detector's scores (:func:`transform_scores`).

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

from semsad_jax.augment.apply import to_float
from semsad_jax.method.features import map_batched
from semsad_jax.method.losses import pair_score
from semsad_jax.method.pairs import PairSettings, sample_pairs, stack_pair
from semsad_jax.method.transforms import all_transforms, num_transforms, transform_log_likelihood


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
def sampled_pair_scores(
    graphdef, settings: PairSettings, dtype, params, stats, images, nbrs, idx, key
) -> tuple[jax.Array, jax.Array]:
    """Inference-mode scores (positives, negatives) [B] of pairs sampled as in training.

    Pairs come from :func:`pairs.sample_pairs` on ``images`` / ``nbrs`` at batch ``idx`` with
    ``key``; positives and negatives are scored in separate passes (this matters only for the
    transductive norm, whose batch statistics then never mix the two).
    """
    pairs = sample_pairs(key, images, nbrs, idx, settings, dtype)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    pos = stack_pair(pairs["ref_pos"], pairs["partner_pos"])
    neg = stack_pair(pairs["ref_neg"], pairs["partner_neg"])
    s_pos, s_neg = forward_pairs(model, pos, neg, two_passes=True)
    return pair_score(s_pos), pair_score(s_neg)


@partial(jax.jit, static_argnames=("graphdef", "kind", "dtype"))
def _transform_scores(graphdef, params, batch_stats, images, kind, dtype):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    copies, labels = all_transforms(to_float(images, dtype), kind)
    logits = model(copies)
    num = num_transforms(kind)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return transform_log_likelihood(logits, num), correct.reshape(num, -1).mean(axis=0)


def transform_scores(
    graphdef: nnx.GraphDef,
    params: dict,
    batch_stats: dict,
    images_u8: np.ndarray,
    kind: str,
    *,
    mesh: Mesh,
    inputs_per_call: int = 2000,
    dtype: Any = jnp.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """The rotation detector in inference mode: (scores float32 [N], accuracies float32 [N]).

    score = the mean over the transformations t of ``kind`` of log p(t | t(x)) (higher = more
    in-distribution); accuracy = the fraction of x's transformed copies classified right. Images
    are scored in padded batches sharded over ``mesh``, each image with all its T copies: a batch
    holds ``inputs_per_call // T`` images (at least one), so ``inputs_per_call`` bounds the network
    inputs of one call whatever ``kind`` (scores do not depend on the batch).
    """
    fn = lambda x: _transform_scores(graphdef, params, batch_stats, x, kind, dtype)
    batch_size = max(1, int(inputs_per_call) // num_transforms(kind))
    out = map_batched(fn, (images_u8,), mesh=mesh, batch_size=batch_size)
    if len(images_u8) == 0:
        return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
    return tuple(np.asarray(a, np.float32).reshape(len(images_u8)) for a in out)
