"""The discriminator's training pairs, sampled on the device from uint8 images.

For a batch of B distinct image indices ``batch_idx`` (row i holds image x_i):

* Positive pairs ``(ref_pos[i], partner_pos[i])``: two ``pos_augment`` (t_pos) views of x_i, except
  exactly ``round(mu * B)`` rows at random positions (``is_neighbour_pair``) whose partner is a
  member of the semantic neighbourhood S(x_i), chosen uniformly among its k entries. Neighbour pairs
  are NOT transformed: (x_i, n) as they are (paper App. D: "for augmentation with semantically
  similar pairs from the training set there is no transformation applied on positive pairs"; the
  authors' code does the same), which is exactly what the detector sees at test time.
  ``neighbour_augment=True`` (ablation only: what this library did before it followed App. D) puts
  them through ``pos_augment`` like the other positives.
* Negative pairs ``(ref_neg[i], partner_neg[i])``: x_i against ``x_j`` with
  ``j = batch_idx[(i + r_i) % B]``, ``r_i`` uniform in 1..B-1, so a negative never pairs an image
  index with itself (``neg_partner_idx`` = j).

Variants (``discriminator.pairs``):

* ``"paper"``: both images of a negative go through ``neg_augment`` (t_neg: crop 0.08-1, flip,
  jitter, blur with p 0.2), independently: P_neg(x, x') = T_n(x') T_n(x) (paper Sec. 3 after Eq. 2;
  App. D, "on two randomly selected images").
* ``"authors"`` (nimaous/SemSAD code): the negatives reuse the positives' reference tensor
  (``ref_neg is ref_pos``: a t_pos view, or x itself on neighbour rows); the default
  ``neg_augment="t_neg"`` becomes ``"t_neg_authors"`` (blur with p 0.5); any other ``neg_augment``
  preset is used as given.

Extension (``discriminator.shifted_negatives``, 0 = off = the paper): that fraction of the negative
rows (``is_shifted_negative``) pairs a t_pos view of x_i with a SHIFTED copy of another t_pos view of
x_i: rotated by 90, 180 or 270 degrees, or its four quadrants permuted. A shifted copy keeps every
low-level statistic of the image (colours, contrast, sharpness, texture) and breaks its global
layout, so such negatives take away "same low-level statistics = positive" as a shortcut (the
shifting transformations of CSI, Tack et al. 2020, used as negatives in Rafiee et al. 2022).
``neg_partner_idx`` is x_i's own index on those rows. ``discriminator.shifted_kind`` chooses the
transformation (:data:`SHIFT_KINDS`, :func:`shift_images`): ``"rotate_or_quadrants"`` (the default,
the behaviour before the key existed), ``"rotation"``, ``"patch4"`` / ``"patch16"`` (the 2x2 / 4x4
grid of patches permuted) or ``"pixels"`` (every pixel moved: only the colour histogram is kept),
the statistics-keeping negatives of Rafiee et al. 2022.

Extension (``discriminator.matched_views``, False = the paper): the view strength stops telling
positives from negatives. Positives are mildly augmented (t_pos) or plain (the neighbour pairs),
negatives strongly (t_neg), so "how augmented is this pair" is itself a cue s can learn instead of
meaning, and test pairs are plain. With matched views, every pair kind draws its strength from one
mixture: exactly ``round(mu * B)`` negative rows are plain, like the neighbour positives, and every
other row of either kind takes t_pos or t_neg views with probability 1/2 each (both images of a
pair the same preset). ``view_strength_pos`` / ``view_strength_neg`` (int32 [B]: 0 plain, 1 t_pos,
2 t_neg) record it. Needs ``pairs="paper"``.

Every random choice comes from ``key`` (callers pass ``fold_in(seed_key, step)``); augmentation of
row i depends only on (key, i) (see :func:`augment.augment_batch`), so the result does not depend on
how the batch is sharded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from semsad_jax.augment.apply import augment_batch, to_float
from semsad_jax.augment.presets import AugmentSpec, get_spec
from semsad_jax.errors import SemsadError
from semsad_jax.method.shifts import SHIFT_KINDS, shift_images

VARIANTS = ("paper", "authors")


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """The pair-sampling settings of a ``discriminator`` config section (hashable: jit-static)."""

    variant: str = "paper"
    mu: float = 1.0 / 32
    pos_augment: str | AugmentSpec = "t_pos"  # preset name or spec (see augment.PRESETS)
    neg_augment: str | AugmentSpec = "t_neg"
    shifted_negatives: float = 0.0  # extension: fraction of negatives that are shifted copies
    shifted_kind: str = SHIFT_KINDS[0]  # extension: which shifting transformation (SHIFT_KINDS)
    matched_views: bool = False  # extension: positives and negatives from one view-strength mixture
    neighbour_augment: bool = False  # ablation: neighbour pairs through pos_augment (not the paper)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise SemsadError(
                f"unknown discriminator.pairs {self.variant!r}; use one of {', '.join(VARIANTS)}."
            )
        if not 0.0 <= self.mu <= 1.0:
            raise SemsadError(f"discriminator.mu={self.mu} must be in [0, 1].")
        if not 0.0 <= self.shifted_negatives <= 1.0:
            raise SemsadError(
                f"discriminator.shifted_negatives={self.shifted_negatives} must be in [0, 1]."
            )
        if self.matched_views and self.variant != "paper":
            raise SemsadError(
                "discriminator.matched_views needs discriminator.pairs='paper' (the authors' "
                "negatives reuse the positives' reference view)."
            )
        if self.shifted_kind not in SHIFT_KINDS:
            raise SemsadError(
                f"unknown discriminator.shifted_kind {self.shifted_kind!r}; use one of "
                f"{', '.join(SHIFT_KINDS)}."
            )
        get_spec(self.pos_augment)
        get_spec(self.neg_augment)

    def num_neighbour_pairs(self, batch: int) -> int:
        """Exactly ``round(mu * batch)`` positive pairs are neighbour pairs."""
        return round(self.mu * batch)

    def num_shifted_negatives(self, batch: int) -> int:
        """Exactly ``round(shifted_negatives * batch)`` negative pairs are shifted copies."""
        return round(self.shifted_negatives * batch)


def pair_settings(cfg: Any) -> PairSettings:
    """:class:`PairSettings` from a ``discriminator`` config section (or a PairSettings as is).

    The authors' variant turns the default negative preset ``t_neg`` into ``t_neg_authors``.
    """
    if isinstance(cfg, PairSettings):
        return cfg
    default = PairSettings()
    variant = str(cfg.get("pairs", default.variant))
    neg = str(cfg.get("neg_augment", default.neg_augment))
    if variant == "authors" and neg == "t_neg":
        neg = "t_neg_authors"
    return PairSettings(
        variant=variant,
        mu=float(cfg.get("mu", default.mu)),
        pos_augment=str(cfg.get("pos_augment", default.pos_augment)),
        neg_augment=neg,
        shifted_negatives=float(cfg.get("shifted_negatives", default.shifted_negatives)),
        shifted_kind=str(cfg.get("shifted_kind", default.shifted_kind)),
        matched_views=bool(cfg.get("matched_views", default.matched_views)),
        neighbour_augment=bool(cfg.get("neighbour_augment", default.neighbour_augment)),
    )


def sample_pair_indices(
    key: jax.Array, neighbours: jax.Array, batch_idx: jax.Array, cfg: Any
) -> dict[str, jax.Array]:
    """Which images each pair of :func:`sample_pairs` is made of (cheap: no image is read).

    Args: as :func:`sample_pairs` (the same ``key``). Returns ``batch_idx``, ``pos_partner_idx``,
    ``neg_partner_idx`` (int32 [B], before shifted negatives) and ``is_neighbour_pair`` (bool [B]).
    Runs on the device with the small [N, k] neighbour table, or anywhere the host needs the rows
    to gather (``data.placement=host``).
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
    return {
        "batch_idx": batch_idx,
        "pos_partner_idx": partner_idx,
        "neg_partner_idx": neg_partner_idx,
        "is_neighbour_pair": is_nb,
    }


ROW_SETS = ("batch_idx", "pos_partner_idx", "neg_partner_idx")  # the rows a batch of pairs reads


def pair_rows(images_u8: jax.Array, indices: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
    """The uint8 rows :func:`build_pair_views` reads: images at each of :data:`ROW_SETS`."""
    return tuple(images_u8[indices[name]] for name in ROW_SETS)


def build_pair_views(
    key: jax.Array,
    rows: tuple[jax.Array, jax.Array, jax.Array],
    indices: dict[str, jax.Array],
    cfg: Any,
    dtype: Any = jnp.float32,
) -> dict[str, jax.Array]:
    """The augmented pairs of :func:`sample_pairs` from gathered rows (:func:`pair_rows`).

    ``key`` and ``indices`` as :func:`sample_pair_indices` got and gave; ``rows`` may have been
    gathered on the device or on the host: the views are the same.
    """
    settings = pair_settings(cfg)
    keys = jax.random.split(key, 8)
    x, partners, negatives = rows
    is_nb, neg_partner_idx = indices["is_neighbour_pair"], indices["neg_partner_idx"]
    batch = x.shape[0]
    pos_spec, neg_spec = get_spec(settings.pos_augment), get_spec(settings.neg_augment)
    plain = is_nb & (not settings.neighbour_augment)  # positives made of untransformed images
    if settings.matched_views:
        views = _matched_views(jax.random.fold_in(key, 8), rows, plain, settings, pos_spec,
                               neg_spec, dtype)  # fmt: skip
        ref_pos, partner_pos, ref_neg, partner_neg, strength_pos, strength_neg = views
    else:
        rows_plain = plain[:, None, None, None]
        ref_pos = jnp.where(
            rows_plain, to_float(x, dtype), augment_batch(keys[3], x, pos_spec, dtype=dtype)
        )
        partner_pos = jnp.where(
            rows_plain,
            to_float(partners, dtype),
            augment_batch(keys[4], partners, pos_spec, dtype=dtype),
        )
        if settings.variant == "authors":
            ref_neg = ref_pos
        else:
            ref_neg = augment_batch(keys[5], x, neg_spec, dtype=dtype)
        partner_neg = augment_batch(keys[6], negatives, neg_spec, dtype=dtype)
        strength_pos = jnp.where(plain, 0, 1).astype(jnp.int32)
        strength_neg = jnp.full((batch,), 2, jnp.int32)

    # Extension: shifted copies of the image itself as negative partners.
    num_shifted = settings.num_shifted_negatives(batch)
    is_shifted = jnp.zeros((batch,), bool)
    if num_shifted:
        shift_keys = jax.random.split(keys[7], 3)
        rows_shifted = jax.random.permutation(shift_keys[0], batch)[:num_shifted]
        is_shifted = is_shifted.at[rows_shifted].set(True)
        view = augment_batch(shift_keys[1], x, pos_spec, dtype=dtype)
        shifted = shift_images(shift_keys[2], view, settings.shifted_kind)
        partner_neg = jnp.where(is_shifted[:, None, None, None], shifted, partner_neg)
        if settings.variant == "paper":  # the reference of a shifted pair is a t_pos view too
            ref_pos_view = augment_batch(
                jax.random.fold_in(shift_keys[1], 1), x, pos_spec, dtype=dtype
            )
            ref_neg = jnp.where(is_shifted[:, None, None, None], ref_pos_view, ref_neg)
        neg_partner_idx = jnp.where(is_shifted, indices["batch_idx"], neg_partner_idx)
    return {
        "ref_pos": ref_pos,
        "partner_pos": partner_pos,
        "ref_neg": ref_neg,
        "partner_neg": partner_neg,
        "is_neighbour_pair": is_nb,
        "is_shifted_negative": is_shifted,
        "view_strength_pos": strength_pos,
        "view_strength_neg": jnp.where(is_shifted, 1, strength_neg).astype(jnp.int32),
        "pos_partner_idx": indices["pos_partner_idx"],
        "neg_partner_idx": neg_partner_idx.astype(jnp.int32),
    }


def _matched_views(key, rows, plain_pos, settings, pos_spec, neg_spec, dtype):
    """(ref_pos, partner_pos, ref_neg, partner_neg, strength_pos, strength_neg) with matched view
    strengths (module docstring): the ``plain_pos`` positives (the neighbour pairs) and as many
    negatives untransformed, the rest t_pos or t_neg with probability 1/2, both images of a pair
    through the same preset."""
    x, partners, negatives = rows
    batch = x.shape[0]
    k = jax.random.split(key, 8)
    plain_neg = jnp.zeros((batch,), bool)
    num_plain = settings.num_neighbour_pairs(batch)
    if num_plain:
        plain_neg = plain_neg.at[jax.random.permutation(k[0], batch)[:num_plain]].set(True)
    strong_pos = jax.random.bernoulli(k[1], 0.5, (batch,))
    strong_neg = jax.random.bernoulli(k[2], 0.5, (batch,))

    def view(k_pos, k_neg, images, plain, strong):
        mild = augment_batch(k_pos, images, pos_spec, dtype=dtype)
        heavy = augment_batch(k_neg, images, neg_spec, dtype=dtype)
        out = jnp.where(strong[:, None, None, None], heavy, mild)
        return jnp.where(plain[:, None, None, None], to_float(images, dtype), out)

    strength = lambda plain, strong: jnp.where(plain, 0, jnp.where(strong, 2, 1)).astype(jnp.int32)
    return (
        view(k[3], jax.random.fold_in(k[3], 1), x, plain_pos, strong_pos),
        view(k[4], jax.random.fold_in(k[4], 1), partners, plain_pos, strong_pos),
        view(k[5], jax.random.fold_in(k[5], 1), x, plain_neg, strong_neg),
        view(k[6], jax.random.fold_in(k[6], 1), negatives, plain_neg, strong_neg),
        strength(plain_pos, strong_pos),
        strength(plain_neg, strong_neg),
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

    :func:`sample_pair_indices`, :func:`pair_rows` and :func:`build_pair_views` in one.

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
      a neighbour pair); ``neg_partner_idx``: int32 [B], the image index of each negative partner;
      ``is_shifted_negative``: bool [B] (exactly round(shifted_negatives * B) True);
      ``view_strength_pos`` / ``view_strength_neg``: int32 [B], 0 plain, 1 t_pos, 2 t_neg views.
    """
    indices = sample_pair_indices(key, neighbours, batch_idx, cfg)
    return build_pair_views(key, pair_rows(images_u8, indices), indices, cfg, dtype)


def stack_pair(reference: jax.Array, partner: jax.Array) -> jax.Array:
    """The discriminator's input: [B, H, W, 3] twice -> [B, H, W, 6], channels (reference, partner)."""
    return jnp.concatenate([reference, partner], axis=-1)
