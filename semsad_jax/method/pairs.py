"""The discriminator's training pairs, sampled on the device from uint8 images.

For a batch of B distinct image indices ``batch_idx`` (row i holds image x_i):

* Positive pairs ``(ref_pos[i], partner_pos[i])``: two views of x_i, except exactly
  ``round(mu * B)`` rows at random positions (``is_neighbour_pair``) whose partner is a member of
  the semantic neighbourhood S(x_i), chosen uniformly among its k entries.
* Negative pairs ``(ref_neg[i], partner_neg[i])``: a view of x_i against a ``neg_augment`` view of
  ``x_j`` with ``j = batch_idx[(i + r_i) % B]``, ``r_i`` uniform in 1..B-1, so a negative never pairs
  an image index with itself (``neg_partner_idx`` = j).

Variants (``discriminator.pairs``):

* ``"paper"``: every positive view, neighbour pairs included, is an independent ``pos_augment``
  (t_pos) view; the reference of each negative is a third, independent t_pos view of x_i; negative
  partners use ``neg_augment`` (t_neg: crop 0.08-1, flip, jitter, blur with p 0.2).
* ``"authors"`` (nimaous/SemSAD code): neighbour pairs are both un-augmented (t_org); the negatives
  reuse the positives' reference tensor (``ref_neg is ref_pos``, un-augmented on neighbour rows too);
  the default ``neg_augment="t_neg"`` is replaced by ``"t_neg_authors"`` (blur with p 0.5); any
  other ``neg_augment`` preset is used as given.

Every random choice comes from ``key`` (callers pass ``fold_in(seed_key, step)``); augmentation of
row i depends only on (key, i) (see :func:`augment.augment_batch`), so the result does not depend on
how the batch is sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from semsad_jax.augment import AugmentSpec, augment_batch, get_spec, to_float
from semsad_jax.errors import SemsadError

VARIANTS = ("paper", "authors")


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """The pair-sampling settings of a ``discriminator`` config section (hashable: jit-static)."""

    variant: str = "paper"
    mu: float = 1.0 / 32
    pos_augment: str | AugmentSpec = "t_pos"  # preset name or spec (see augment.PRESETS)
    neg_augment: str | AugmentSpec = "t_neg"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise SemsadError(
                f"unknown discriminator.pairs {self.variant!r}; use one of {', '.join(VARIANTS)}."
            )
        if not 0.0 <= self.mu <= 1.0:
            raise SemsadError(f"discriminator.mu={self.mu} must be in [0, 1].")
        get_spec(self.pos_augment)
        get_spec(self.neg_augment)

    def num_neighbour_pairs(self, batch: int) -> int:
        """Exactly ``round(mu * batch)`` positive pairs are neighbour pairs."""
        return round(self.mu * batch)


def pair_settings(cfg: Any) -> PairSettings:
    """:class:`PairSettings` from a ``discriminator`` config section (or a PairSettings as is).

    The authors' variant turns the default negative preset ``t_neg`` into ``t_neg_authors``.
    """
    if isinstance(cfg, PairSettings):
        return cfg
    variant = str(cfg.get("pairs", "paper"))
    neg = str(cfg.get("neg_augment", "t_neg"))
    if variant == "authors" and neg == "t_neg":
        neg = "t_neg_authors"
    return PairSettings(
        variant=variant,
        mu=float(cfg.get("mu", 1.0 / 32)),
        pos_augment=str(cfg.get("pos_augment", "t_pos")),
        neg_augment=neg,
    )


def sample_pairs(
    key: jax.Array,
    images_u8: jax.Array,
    neighbours: jax.Array,
    batch_idx: jax.Array,
    cfg: Any,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """Positive and negative pairs for the discriminator (jit-able; see the module docstring).

    Args:
      key: a PRNG key (e.g. ``fold_in(seed_key, step)``).
      images_u8: uint8 [N, H, W, 3], all images (on the device).
      neighbours: int [N, k], semantic neighbourhoods (row i never holds i).
      batch_idx: int [B], B >= 2 distinct indices into ``images_u8``.
      cfg: a ``discriminator`` config section or a :class:`PairSettings` (static under jit).
      dtype: dtype of the returned views.
    Returns:
      dict of ``ref_pos``, ``partner_pos``, ``ref_neg``, ``partner_neg``: ``dtype`` [B, H, W, 3] in
      [0, 1]; ``is_neighbour_pair``: bool [B] (exactly round(mu * B) True);
      ``pos_partner_idx``: int32 [B], the image index of each positive partner (= batch_idx where not
      a neighbour pair); ``neg_partner_idx``: int32 [B], the image index of each negative partner.
    """
    settings = pair_settings(cfg)
    batch_idx = jnp.asarray(batch_idx, jnp.int32)
    batch = batch_idx.shape[0]
    if batch < 2:
        raise SemsadError(f"the discriminator batch must hold at least 2 images, got {batch}.")
    k = neighbours.shape[1]
    keys = jax.random.split(key, 8)

    # Which rows are neighbour pairs (exactly round(mu * B), at random positions), and with whom.
    num_nb = settings.num_neighbour_pairs(batch)
    chosen = jax.random.permutation(keys[0], batch)[:num_nb]
    is_nb = jnp.zeros((batch,), bool).at[chosen].set(True)
    member = jax.random.randint(keys[1], (batch,), 0, k)
    nb_idx = jnp.take_along_axis(neighbours[batch_idx], member[:, None], axis=1)[:, 0]
    partner_idx = jnp.where(is_nb, nb_idx.astype(jnp.int32), batch_idx)

    # Negative partner: another row of the batch, never the same one.
    shift = jax.random.randint(keys[2], (batch,), 1, batch)
    neg_partner_idx = batch_idx[(jnp.arange(batch) + shift) % batch]

    x = images_u8[batch_idx]
    partners = images_u8[partner_idx]
    pos_spec, neg_spec = get_spec(settings.pos_augment), get_spec(settings.neg_augment)
    ref_pos = augment_batch(keys[3], x, pos_spec, dtype=dtype)
    partner_pos = augment_batch(keys[4], partners, pos_spec, dtype=dtype)
    if settings.variant == "authors":
        plain = is_nb[:, None, None, None]
        ref_pos = jnp.where(plain, to_float(x, dtype), ref_pos)
        partner_pos = jnp.where(plain, to_float(partners, dtype), partner_pos)
        ref_neg = ref_pos
    else:
        ref_neg = augment_batch(keys[5], x, pos_spec, dtype=dtype)
    partner_neg = augment_batch(keys[6], images_u8[neg_partner_idx], neg_spec, dtype=dtype)
    return {
        "ref_pos": ref_pos,
        "partner_pos": partner_pos,
        "ref_neg": ref_neg,
        "partner_neg": partner_neg,
        "is_neighbour_pair": is_nb,
        "pos_partner_idx": partner_idx,
        "neg_partner_idx": neg_partner_idx.astype(jnp.int32),
    }


def stack_pair(reference: jax.Array, partner: jax.Array) -> jax.Array:
    """The discriminator's input: [B, H, W, 3] twice -> [B, H, W, 6], channels (reference, partner)."""
    return jnp.concatenate([reference, partner], axis=-1)
