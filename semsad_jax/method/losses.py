"""SemSAD losses: the contrastive loss of the encoder h and the discriminator objective of s.

Everything is computed in float32 (inputs may be bfloat16), is numerically stable (log-sum-exp,
``log_sigmoid``) and jit-able. Under ``jit`` with a batch sharded over devices, the ``[B, B]``
similarity matrices are formed over the global batch (XLA inserts the all-gather): nothing here
assumes a per-device batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from semsad_jax.errors import SemsadError
from semsad_jax.method.neighbours import l2_normalize

CONTRASTIVE_LOSSES = ("infonce", "ntxent")
GAMMA_MODES = ("uniform", "integer")
_HIGHEST = jax.lax.Precision.HIGHEST  # Full float32 matmul (no TF32 / bf16 passes) for the logits.


def _unit(z: jax.Array) -> jax.Array:
    """[B, D] any float -> float32 rows of unit L2 norm (as torch.nn.functional.normalize)."""
    return l2_normalize(jnp.asarray(z, jnp.float32))


def _check_pair(z1: jax.Array, z2: jax.Array) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be [B, D]; got {z1.shape} and {z2.shape}.")


def _check_temperature(temperature) -> None:
    if isinstance(temperature, int | float) and temperature <= 0:
        raise SemsadError(
            f"Contrastive temperature must be > 0, got {temperature}; fix the config."
        )


def infonce(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """The authors' one-directional InfoNCE; scalar float32.

    ``z1, z2``: ``[B, D]`` projections of two views (L2-normalised here). Logits
    ``z1 @ z2.T / temperature`` (view-1 rows against view-2 columns), cross-entropy with labels
    ``arange(B)``, mean over the B rows.
    """
    _check_pair(z1, z2)
    _check_temperature(temperature)
    logits = jnp.matmul(_unit(z1), _unit(z2).T, precision=_HIGHEST) / temperature
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits))


def ntxent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """SimCLR's symmetric NT-Xent over the 2B views; scalar float32.

    ``z1, z2``: ``[B, D]``. Each of the 2B normalised views is classified against the other 2B - 1
    (self-similarity masked out): its positive is its partner view, the 2B - 2 others are
    negatives. Mean over the 2B views.
    """
    _check_pair(z1, z2)
    _check_temperature(temperature)
    batch = z1.shape[0]
    z = _unit(jnp.concatenate([z1, z2], axis=0))
    logits = jnp.matmul(z, z.T, precision=_HIGHEST) / temperature
    logits = jnp.where(jnp.eye(2 * batch, dtype=bool), -jnp.inf, logits)
    partner = jnp.concatenate([jnp.arange(batch, 2 * batch), jnp.arange(batch)])
    positive = jnp.take_along_axis(logits, partner[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - positive)


def contrastive_loss(name: str, z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
    """Dispatch on ``name``: ``"infonce"`` (:func:`infonce`) or ``"ntxent"`` (:func:`ntxent`)."""
    if name == "infonce":
        return infonce(z1, z2, temperature)
    if name == "ntxent":
        return ntxent(z1, z2, temperature)
    raise SemsadError(
        f"Unknown contrastive loss {name!r}; set encoder.loss to one of {', '.join(CONTRASTIVE_LOSSES)}."
    )


def discriminator_objective(s_pos: jax.Array, s_neg: jax.Array, gamma) -> jax.Array:
    """SemSAD's objective J (to MAXIMISE); scalar float32.

    ``J = E_pos[log sig(a)] + gamma * E_neg[log(1 - sig(a))]`` with ``a = s - log(gamma)``.
    ``s_pos``: ``[P]`` or ``[P, K]`` logits of positive pairs, ``s_neg``: ``[N]`` or ``[N, K]`` of
    negative pairs (K logits of a multi-output head, the authors' 64: J is computed per logit and
    averaged over K, as the authors do). ``gamma``: scalar > 0 (float or traced array).
    """
    s_pos = jnp.asarray(s_pos, jnp.float32)
    s_neg = jnp.asarray(s_neg, jnp.float32)
    if s_pos.ndim not in (1, 2) or s_pos.ndim != s_neg.ndim or s_pos.shape[1:] != s_neg.shape[1:]:
        raise ValueError(
            f"s_pos and s_neg must be [P]/[N] or [P, K]/[N, K]; got "
            f"{s_pos.shape} and {s_neg.shape}."
        )
    gamma = jnp.asarray(gamma, jnp.float32)
    log_gamma = jnp.log(gamma)
    pos_term = jnp.mean(jax.nn.log_sigmoid(s_pos - log_gamma))
    neg_term = jnp.mean(jax.nn.log_sigmoid(log_gamma - s_neg))  # log(1 - sig(a)) = log sig(-a)
    return pos_term + gamma * neg_term


def discriminator_loss(s_pos: jax.Array, s_neg: jax.Array, gamma) -> jax.Array:
    """``-discriminator_objective(s_pos, s_neg, gamma)`` (to minimise); scalar float32."""
    return -discriminator_objective(s_pos, s_neg, gamma)


def sample_gamma(key: jax.Array, mode: str, gamma_max: float = 10.0) -> jax.Array:
    """One gamma for a training step; scalar float32.

    ``"uniform"``: ``U(1, gamma_max)`` (paper). ``"integer"``: a uniform integer in
    ``1 .. gamma_max - 1`` (authors: ``randint(1, 10)``, i.e. 1..9). ``mode`` and ``gamma_max`` are
    Python values (static under jit); ``key`` may be traced.
    """
    if mode == "uniform":
        if not gamma_max > 1.0:
            raise SemsadError(
                f"discriminator.gamma_max must be > 1 (got {gamma_max}); set it to "
                f"e.g. 10 (the paper's U(1, 10))."
            )
        return jax.random.uniform(key, (), jnp.float32, minval=1.0, maxval=gamma_max)
    if mode == "integer":
        if not float(gamma_max).is_integer() or gamma_max < 2:
            raise SemsadError(
                f"discriminator.gamma_max must be an integer >= 2 for integer gamma "
                f"(got {gamma_max}); set it to e.g. 10 (the authors' 1..9)."
            )
        high = int(gamma_max)  # exclusive: values 1 .. gamma_max - 1
        return jax.random.randint(key, (), 1, high).astype(jnp.float32)
    raise SemsadError(
        f"Unknown gamma mode {mode!r}; set discriminator.gamma to one of {', '.join(GAMMA_MODES)}."
    )


def pair_score(logits: jax.Array) -> jax.Array:
    """Discriminator logits ``[B]`` or ``[B, K]`` -> ``[B]`` float32 pair scores (sum over K)."""
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim == 1:
        return logits
    if logits.ndim == 2:
        return jnp.sum(logits, axis=1)
    raise ValueError(f"pair_score expects [B] or [B, K] logits, got shape {logits.shape}.")
