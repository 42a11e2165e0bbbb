"""Pair sampler: counts, partners, no self-negatives, determinism, both variants (no model needed)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semsad_jax.augment import AugmentSpec, get_spec
from semsad_jax.errors import SemsadError
from semsad_jax.method.pairs import PairSettings, pair_settings, sample_pairs, shift_images

N, K, B, SIZE = 24, 3, 16, 8
sample = jax.jit(sample_pairs, static_argnames=("cfg", "dtype"))
# Cheap to compile: a crop and a flip (the real presets are exercised by the training tests).
CROP = AugmentSpec(crop_scale=(0.4, 1.0), jitter_p=0.0, gray_p=0.0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    # neighbours: K distinct indices other than the row itself
    neighbours = np.stack(
        [rng.choice(np.delete(np.arange(N), i), K, replace=False) for i in range(N)]
    )
    batch_idx = rng.permutation(N)[:B].astype(np.int32)
    return jnp.asarray(images), jnp.asarray(neighbours, jnp.int32), jnp.asarray(batch_idx)


def _float(images_u8):
    return np.asarray(images_u8, np.float32) / 255.0


@pytest.mark.parametrize("variant", ["paper", "authors"])
def test_counts_partners_shapes_and_determinism(data, variant):
    images, neighbours, batch_idx = data
    cfg = PairSettings(variant, mu=0.2, pos_augment=CROP, neg_augment=CROP)  # 3 neighbour pairs
    out = sample(jax.random.key(1), images, neighbours, batch_idx, cfg, jnp.float32)
    for name in ("ref_pos", "partner_pos", "ref_neg", "partner_neg"):
        assert out[name].shape == (B, SIZE, SIZE, 3) and out[name].dtype == jnp.float32
        assert float(out[name].min()) >= 0.0 and float(out[name].max()) <= 1.0
    assert out["is_neighbour_pair"].dtype == jnp.bool_
    assert out["neg_partner_idx"].dtype == jnp.int32
    is_nb = np.asarray(out["is_neighbour_pair"])
    assert is_nb.sum() == 3
    bi, nb, pos_partner = map(np.asarray, (batch_idx, neighbours, out["pos_partner_idx"]))
    for i in range(B):
        if is_nb[i]:
            assert pos_partner[i] in nb[bi[i]]
        else:
            assert pos_partner[i] == bi[i]
    neg = np.asarray(out["neg_partner_idx"])
    assert np.all(neg != bi) and set(neg) <= set(bi)
    again = sample(jax.random.key(1), images, neighbours, batch_idx, cfg, jnp.float32)
    other = sample(jax.random.key(2), images, neighbours, batch_idx, cfg, jnp.float32)
    for name in out:
        np.testing.assert_array_equal(np.asarray(out[name]), np.asarray(again[name]))
    assert not np.array_equal(np.asarray(out["partner_neg"]), np.asarray(other["partner_neg"]))
    x = _float(images)[bi]
    # neighbour pairs un-augmented in both variants (paper App. D), the other views augmented
    np.testing.assert_allclose(np.asarray(out["ref_pos"])[is_nb], x[is_nb], atol=1e-6)
    partners = _float(images)[pos_partner[is_nb]]
    np.testing.assert_allclose(np.asarray(out["partner_pos"])[is_nb], partners, atol=1e-6)
    assert not np.allclose(np.asarray(out["ref_pos"])[~is_nb], x[~is_nb], atol=1e-3)
    if variant == "authors":  # negatives reuse the reference tensor
        np.testing.assert_array_equal(np.asarray(out["ref_neg"]), np.asarray(out["ref_pos"]))
    else:  # both images of a negative through t_neg, independently
        assert not np.allclose(np.asarray(out["ref_neg"]), np.asarray(out["ref_pos"]), atol=1e-3)
        assert not np.allclose(np.asarray(out["ref_neg"]), x, atol=1e-3)
    assert not np.asarray(out["is_shifted_negative"]).any()  # off by default (the paper)
    # ablation: neighbour pairs through t_pos like the others (the same key: only those rows move)
    cfg_aug = dataclasses.replace(cfg, neighbour_augment=True)
    aug = sample(jax.random.key(1), images, neighbours, batch_idx, cfg_aug, jnp.float32)
    assert not np.allclose(np.asarray(aug["ref_pos"])[is_nb], x[is_nb], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(aug["is_neighbour_pair"]), is_nb)
    np.testing.assert_array_equal(
        np.asarray(aug["ref_pos"])[~is_nb], np.asarray(out["ref_pos"])[~is_nb]
    )


def test_paper_negatives_use_t_neg_on_both_images(data):
    """With t_org positives and a crop-only t_neg, every negative image is a crop, none the original."""
    images, neighbours, batch_idx = data
    crop = AugmentSpec(crop_scale=(0.1, 0.2), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    cfg = PairSettings("paper", mu=0.0, pos_augment="t_org", neg_augment=crop)
    out = sample(jax.random.key(4), images, neighbours, batch_idx, cfg, jnp.float32)
    f = _float(images)
    np.testing.assert_allclose(np.asarray(out["ref_pos"]), f[np.asarray(batch_idx)], atol=1e-6)
    for name, idx in (("ref_neg", batch_idx), ("partner_neg", out["neg_partner_idx"])):
        original = f[np.asarray(idx)]
        diff = np.abs(np.asarray(out[name]) - original).reshape(B, -1).max(axis=1)
        assert np.all(diff > 1e-3), name


def test_shifted_negatives_keep_the_pixels_and_change_the_layout(data):
    images, neighbours, batch_idx = data
    cfg = PairSettings("paper", mu=0.0, pos_augment="t_org", shifted_negatives=0.5)
    out = sample(jax.random.key(5), images, neighbours, batch_idx, cfg, jnp.float32)
    shifted = np.asarray(out["is_shifted_negative"])
    assert shifted.sum() == B // 2
    bi = np.asarray(batch_idx)
    np.testing.assert_array_equal(np.asarray(out["neg_partner_idx"])[shifted], bi[shifted])
    assert np.all(np.asarray(out["neg_partner_idx"])[~shifted] != bi[~shifted])
    x = _float(images)[bi][shifted]
    partner = np.asarray(out["partner_neg"])[shifted]
    np.testing.assert_allclose(np.asarray(out["ref_neg"])[shifted], x, atol=1e-6)  # t_org ref
    for a, b in zip(partner, x):
        np.testing.assert_allclose(np.sort(a.ravel()), np.sort(b.ravel()), atol=1e-6)
        assert not np.allclose(a, b)


FLIP = AugmentSpec(crop_scale=None, flip_p=1.0, jitter_p=0.0, gray_p=0.0)  # mild: mirrored
GRAY = AugmentSpec(crop_scale=None, flip_p=0.0, jitter_p=0.0, gray_p=1.0)  # heavy: grayscale


def test_matched_views_give_positives_and_negatives_one_strength_mixture(data):
    """matched_views: exactly as many plain negatives as plain (neighbour) positives, every other
    row of either kind t_pos or t_neg with probability 1/2, both images of a pair the same preset;
    off (the paper) positives are t_pos or plain and negatives always t_neg."""
    images, neighbours, batch_idx = data
    cfg = PairSettings("paper", mu=0.25, pos_augment=FLIP, neg_augment=GRAY, matched_views=True)
    bi = np.asarray(batch_idx)
    strong = {"pos": [], "neg": []}
    for seed in range(12):
        out = sample(jax.random.key(seed), images, neighbours, batch_idx, cfg, jnp.float32)
        is_nb = np.asarray(out["is_neighbour_pair"])
        kinds = {
            "pos": (out["ref_pos"], out["partner_pos"], bi, np.asarray(out["pos_partner_idx"])),
            "neg": (out["ref_neg"], out["partner_neg"], bi, np.asarray(out["neg_partner_idx"])),
        }
        for kind, (ref, partner, ref_idx, partner_idx) in kinds.items():
            strength = np.asarray(out[f"view_strength_{kind}"])
            assert (strength == 0).sum() == 4  # round(0.25 * 16), for both kinds
            if kind == "pos":
                np.testing.assert_array_equal(strength == 0, is_nb)
            for view, idx in ((ref, ref_idx), (partner, partner_idx)):
                raw = _float(images)[idx]
                view = np.asarray(view)
                for row in range(B):
                    if strength[row] == 0:
                        np.testing.assert_allclose(view[row], raw[row], atol=1e-6)
                    elif strength[row] == 1:
                        np.testing.assert_allclose(view[row], raw[row][:, ::-1], atol=1e-6)
                    else:
                        assert np.allclose(view[row][..., 0], view[row][..., 1], atol=1e-6)
                        assert not np.allclose(view[row], raw[row], atol=1e-3)
            strong[kind].extend(strength[strength > 0] == 2)
    for kind in ("pos", "neg"):
        assert 0.4 < np.mean(strong[kind]) < 0.6, kind  # 144 rows each: 1/2 +- 0.1 (2.4 sigma)
    paper = dataclasses.replace(cfg, matched_views=False)
    out = sample(jax.random.key(0), images, neighbours, batch_idx, paper, jnp.float32)
    assert set(np.asarray(out["view_strength_neg"]).tolist()) == {2}
    assert set(np.asarray(out["view_strength_pos"]).tolist()) == {0, 1}
    with pytest.raises(SemsadError, match="matched_views"):
        PairSettings("authors", matched_views=True)
    assert pair_settings({"matched_views": True}).matched_views


def _patches(image, grid):
    side = image.shape[0] // grid
    return [
        image[i * side : (i + 1) * side, j * side : (j + 1) * side]
        for i in range(grid)
        for j in range(grid)
    ]


@pytest.mark.parametrize("kind", ["rotation", "patch4", "patch16", "pixels"])
def test_statistics_keeping_negatives_keep_the_colour_histogram_and_move_the_layout(kind):
    """Each shifted_kind keeps every pixel (so the colour histogram, mean and contrast) and is
    exactly the transformation it names: a rotation, a permutation of the 2x2 / 4x4 patches, or
    of the pixels (RGB triples kept together)."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 8, 8, 3)).astype(np.float32)
    out = np.asarray(shift_images(jax.random.key(3), jnp.asarray(x), kind))
    seen = set()
    for a, b in zip(out, x):
        # the histogram of every channel, and the multiset of RGB triples, are kept
        for c in range(3):
            np.testing.assert_array_equal(np.sort(a[..., c].ravel()), np.sort(b[..., c].ravel()))
        triples = lambda im: sorted(map(tuple, im.reshape(-1, 3)))
        assert triples(a) == triples(b)
        assert not np.array_equal(a, b)
        if kind == "rotation":
            (r,) = [r for r in (1, 2, 3) if np.array_equal(a, np.rot90(b, r))]
            seen.add(r)
        elif kind in ("patch4", "patch16"):
            grid = 2 if kind == "patch4" else 4
            before, after = _patches(b, grid), _patches(a, grid)
            perm = [next(j for j in range(grid**2) if np.array_equal(g, before[j])) for g in after]
            assert sorted(perm) == list(range(grid**2)) and perm != sorted(perm)
            seen.add(tuple(perm))
    if kind == "rotation":
        assert seen == {1, 2, 3}
    elif kind in ("patch4", "patch16"):
        assert len(seen) > 10  # random permutations, not one fixed shuffle
    if kind == "pixels":  # neighbouring pixels are no longer neighbours: the layout is gone
        moved = np.mean(np.all(out == x, axis=-1))
        assert moved < 0.1


def test_shifted_kind_reaches_the_pairs_and_is_checked(data):
    images, neighbours, batch_idx = data
    cfg = PairSettings(
        "paper", mu=0.0, pos_augment="t_org", shifted_negatives=1.0, shifted_kind="rotation"
    )
    out = sample(jax.random.key(5), images, neighbours, batch_idx, cfg, jnp.float32)
    x = _float(images)[np.asarray(batch_idx)]
    for a, b in zip(np.asarray(out["partner_neg"]), x):
        assert any(np.allclose(a, np.rot90(b, r), atol=1e-6) for r in (1, 2, 3))
    assert pair_settings({"shifted_kind": "pixels"}).shifted_kind == "pixels"
    with pytest.raises(SemsadError, match="shifted_kind"):
        PairSettings(shifted_kind="shuffle")
    with pytest.raises(SemsadError, match="divisible by 4"):
        shift_images(jax.random.key(0), jnp.zeros((2, 6, 6, 3)), "patch16")


def test_shift_images_are_rotations_or_quadrant_permutations():
    rng = np.random.default_rng(0)
    x = rng.random((64, 4, 4, 3)).astype(np.float32)
    out = np.asarray(shift_images(jax.random.key(0), jnp.asarray(x)))
    kinds = set()
    for a, b in zip(out, x):
        rotations = [np.rot90(b, r) for r in (1, 2, 3)]
        quads = [b[:2, :2], b[:2, 2:], b[2:, :2], b[2:, 2:]]
        hit = [r for r in range(3) if np.array_equal(a, rotations[r])]
        if hit:
            kinds.add(hit[0])
            continue
        got = [a[:2, :2], a[:2, 2:], a[2:, :2], a[2:, 2:]]
        perm = [next(j for j in range(4) if np.array_equal(g, quads[j])) for g in got]
        assert perm != [0, 1, 2, 3]
        kinds.add("quadrants")
    assert kinds == {0, 1, 2, "quadrants"}


def test_identity_views_hold_the_chosen_images(data):
    """With t_org everywhere each tensor must be exactly the image its index names."""
    images, neighbours, batch_idx = data
    cfg = PairSettings(mu=0.5, pos_augment="t_org", neg_augment="t_org")
    out = sample(jax.random.key(3), images, neighbours, batch_idx, cfg, jnp.bfloat16)
    assert out["ref_pos"].dtype == jnp.bfloat16
    as32 = {k: np.asarray(v, np.float32) for k, v in out.items()}
    f = _float(images)
    bi = np.asarray(batch_idx)
    tol = dict(atol=1 / 128)  # bfloat16 rounding
    np.testing.assert_allclose(as32["ref_pos"], f[bi], **tol)
    np.testing.assert_allclose(as32["ref_neg"], f[bi], **tol)
    np.testing.assert_allclose(as32["partner_pos"], f[np.asarray(out["pos_partner_idx"])], **tol)
    np.testing.assert_allclose(as32["partner_neg"], f[np.asarray(out["neg_partner_idx"])], **tol)
    assert as32["is_neighbour_pair"].sum() == 8


def test_random_choices_cover_their_ranges(data):
    """Over many keys: every neighbour member and every batch position and shift gets used."""
    images, neighbours, batch_idx = data
    cfg = PairSettings(mu=0.125, pos_augment="t_org", neg_augment="t_org")
    bi, nb = np.asarray(batch_idx), np.asarray(neighbours)
    members, positions, shifts = set(), set(), set()
    for seed in range(40):
        out = sample(jax.random.key(seed), images, neighbours, batch_idx, cfg, jnp.float32)
        is_nb = np.asarray(out["is_neighbour_pair"])
        assert is_nb.sum() == 2
        for i in np.flatnonzero(is_nb):
            members.add(int(np.flatnonzero(nb[bi[i]] == int(out["pos_partner_idx"][i]))[0]))
            positions.add(int(i))
        row_of = {int(v): r for r, v in enumerate(bi)}
        neg = np.asarray(out["neg_partner_idx"])
        shifts.update((row_of[int(neg[i])] - i) % B for i in range(B))
    assert members == set(range(K))
    assert len(positions) >= B - 2
    assert shifts == set(range(1, B))


def test_mu_extremes_and_settings(data):
    images, neighbours, batch_idx = data
    for mu, expected in ((0.0, 0), (1.0, B)):
        cfg = PairSettings(mu=mu, pos_augment="t_org", neg_augment="t_org")
        out = sample(jax.random.key(0), images, neighbours, batch_idx, cfg, jnp.float32)
        assert int(np.asarray(out["is_neighbour_pair"]).sum()) == expected

    class Section(dict):
        get = dict.get

    paper = pair_settings(Section(pairs="paper", mu=0.25, pos_augment="t_pos", neg_augment="t_neg"))
    assert pair_settings(Section(shifted_negatives=0.25)).shifted_negatives == 0.25
    authors = pair_settings(Section(pairs="authors", neg_augment="t_neg"))
    assert paper == PairSettings("paper", 0.25, "t_pos", "t_neg")
    assert authors.neg_augment == "t_neg_authors" and get_spec(authors.neg_augment).blur_p == 0.5
    assert get_spec(paper.neg_augment).blur_p == 0.2
    with pytest.raises(SemsadError, match=r"discriminator\.pairs"):
        pair_settings(Section(pairs="mine"))
    with pytest.raises(SemsadError, match="augmentation preset"):
        PairSettings(pos_augment="nope")
