"""top_k_cosine / semantic_neighbourhoods against scikit-learn's brute-force cosine search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from sklearn.neighbors import NearestNeighbors

from semsad_jax.errors import SemsadError
from semsad_jax.method.neighbours import (
    l2_normalize,
    label_neighbourhoods,
    pooled_neighbourhoods,
    semantic_neighbourhoods,
    top_k_cosine,
)


def _random(rows, dim=8, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)


def _sklearn_top_k(queries, bank, k):
    """Reference (similarities, indices) in float64 by scikit-learn's brute-force search."""
    search = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    distances, indices = search.fit(bank.astype(np.float64)).kneighbors(queries.astype(np.float64))
    return 1.0 - distances, indices


def _exact_cosine(queries, bank):
    q = queries.astype(np.float64)
    b = bank.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return q @ b.T


def _mesh():
    return Mesh(np.array(jax.devices()[:4]), ("data",))


@pytest.mark.parametrize(
    ("num_bank", "bank_chunk", "query_block", "k"),
    [(103, 7, 5, 6), (103, 65536, 1024, 6), (64, 16, 8, 1), (50, 7, 64, 20)],
)
def test_matches_sklearn(num_bank, bank_chunk, query_block, k):
    queries, bank = _random(37, seed=1), _random(num_bank, seed=2)
    sims, idx = top_k_cosine(queries, bank, k, query_block=query_block, bank_chunk=bank_chunk)
    ref_sims, ref_idx = _sklearn_top_k(queries, bank, k)
    assert sims.dtype == np.float32 and idx.dtype == np.int32
    assert sims.shape == idx.shape == (37, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_jax_and_numpy_inputs_agree():
    queries, bank = _random(21, seed=3), _random(40, seed=4)
    from_numpy = top_k_cosine(queries, bank, 3, query_block=8, bank_chunk=9)
    from_jax = top_k_cosine(jnp.asarray(queries), jnp.asarray(bank), 3, query_block=8, bank_chunk=9)
    np.testing.assert_array_equal(from_numpy[1], from_jax[1])
    np.testing.assert_array_equal(from_numpy[0], from_jax[0])


def test_exclude_self_matches_sklearn_without_self():
    bank = _random(45, seed=5)
    sims, idx = top_k_cosine(bank, bank, 4, exclude_self=True, query_block=5, bank_chunk=7)
    ref_sims, ref_idx = _sklearn_top_k(bank, bank, 5)
    np.testing.assert_array_equal(ref_idx[:, 0], np.arange(45))  # sanity: self comes first
    np.testing.assert_array_equal(idx, ref_idx[:, 1:])
    np.testing.assert_allclose(sims, ref_sims[:, 1:], atol=1e-5)
    neighbourhoods = semantic_neighbourhoods(bank, k=4, query_block=5, bank_chunk=7)
    assert neighbourhoods.dtype == np.int32
    np.testing.assert_array_equal(neighbourhoods, idx)


def test_exclude_self_keeps_duplicates_of_the_query():
    bank = _random(12, seed=6)
    bank[7] = bank[2]  # a different image with the same feature is a legitimate neighbour
    idx = semantic_neighbourhoods(bank, k=2, bank_chunk=5, query_block=4)
    assert idx[2, 0] == 7 and idx[7, 0] == 2
    assert not np.any(idx == np.arange(12)[:, None])


def test_padding_rows_are_never_returned():
    # Every real similarity is negative, so unmasked zero padding rows (similarity 0) would win.
    rng = np.random.default_rng(7)
    queries = np.c_[np.ones(9), 0.1 * rng.normal(size=(9, 3))].astype(np.float32)
    bank = np.c_[-np.ones(10), 0.1 * rng.normal(size=(10, 3))].astype(np.float32)
    sims, idx = top_k_cosine(queries, bank, 10, bank_chunk=7, query_block=4)
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.tile(np.arange(10), (9, 1)))
    assert np.all(sims < 0)
    # Same with the self mask: k = N - 1 must return exactly the other rows.
    both = np.r_[queries[:5], -queries[5:]]
    idx = semantic_neighbourhoods(both, k=8, bank_chunk=4, query_block=3)
    for row in range(9):
        np.testing.assert_array_equal(np.sort(idx[row]), np.delete(np.arange(9), row))


def test_ties_prefer_lower_index_across_chunks():
    bank = _random(20, seed=8)
    bank[[3, 9, 16]] = bank[0] * np.array([[1.0], [2.0], [0.5]], np.float32)  # same direction
    _, idx = top_k_cosine(bank[:1], bank, 4, bank_chunk=6)
    np.testing.assert_array_equal(idx[0], [0, 3, 9, 16])


def test_bfloat16_bank_close_to_exact():
    queries, bank = _random(30, dim=16, seed=9), _random(77, dim=16, seed=10)
    sims, idx = top_k_cosine(queries, bank.astype(jnp.bfloat16), 5, bank_chunk=16, query_block=8)
    exact = _exact_cosine(queries, bank)
    ref_sims, ref_idx = _sklearn_top_k(queries, bank, 5)
    np.testing.assert_allclose(sims, ref_sims, atol=0.01)
    assert np.abs(sims - ref_sims).max() > 1e-4  # the product really ran in bfloat16
    # Returned indices are (near-)optimal in exact arithmetic...
    np.testing.assert_allclose(np.take_along_axis(exact, idx, axis=1), ref_sims, atol=0.02)
    # ...and identical wherever the exact similarity gaps exceed the bf16 error.
    padded = np.c_[np.full(30, np.inf), ref_sims, np.full(30, -np.inf)]
    clear = np.minimum(-np.diff(padded, axis=1)[:, :-1], -np.diff(padded, axis=1)[:, 1:]) > 0.02
    assert clear.sum() > 50
    np.testing.assert_array_equal(idx[clear], ref_idx[clear])


def test_sharded_queries_give_the_same_result():
    queries, bank = _random(37, seed=11), _random(50, seed=12)
    mesh = _mesh()
    plain = top_k_cosine(queries, bank, 5, query_block=6, bank_chunk=7)
    sharded = top_k_cosine(queries, bank, 5, query_block=6, bank_chunk=7, mesh=mesh)
    np.testing.assert_array_equal(sharded[1], plain[1])
    np.testing.assert_allclose(sharded[0], plain[0], rtol=0, atol=1e-6)
    own = semantic_neighbourhoods(bank, k=4, query_block=6, bank_chunk=7)
    np.testing.assert_array_equal(
        semantic_neighbourhoods(bank, k=4, query_block=6, bank_chunk=7, mesh=mesh), own
    )


def test_normalized_flag_skips_normalisation():
    queries, bank = _random(10, seed=13), _random(30, seed=14)
    scaled_bank = bank * np.linspace(0.1, 3.0, 30, dtype=np.float32)[:, None]
    _, cosine_idx = top_k_cosine(queries, scaled_bank, 3)
    np.testing.assert_array_equal(cosine_idx, _sklearn_top_k(queries, bank, 3)[1])
    dots, dot_idx = top_k_cosine(queries, scaled_bank, 3, normalized=True)
    raw = queries.astype(np.float64) @ scaled_bank.T
    np.testing.assert_array_equal(dot_idx, np.argsort(-raw, axis=1)[:, :3])
    np.testing.assert_allclose(dots, np.sort(raw, axis=1)[:, ::-1][:, :3], rtol=1e-5)


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]], np.float32)
    out = l2_normalize(x)
    np.testing.assert_allclose(np.asarray(out), [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], rtol=1e-6)
    assert l2_normalize(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(l2_normalize(x, axis=0))[:, 0], [1.0, 0.0, -3.33e-4], atol=1e-6
    )


@pytest.mark.parametrize(
    ("queries", "bank", "kwargs", "message"),
    [
        (np.ones((3, 4)), np.ones((5, 3)), {"k": 1}, "dimension"),
        (np.ones((3, 4)), np.ones((5, 4)), {"k": 6}, "k=6"),
        (np.ones((3, 4)), np.ones((5, 4)), {"k": 0}, "k=0"),
        (np.ones((5, 4)), np.ones((5, 4)), {"k": 5, "exclude_self": True}, "k=5"),
        (np.ones((3, 4)), np.ones((5, 4)), {"k": 1, "exclude_self": True}, "exclude_self"),
        (np.ones((0, 4)), np.ones((5, 4)), {"k": 1}, "empty"),
        (np.ones(4), np.ones((5, 4)), {"k": 1}, "2-D"),
        (np.full((3, 4), np.nan), np.ones((5, 4)), {"k": 1}, "NaN"),
        (np.ones((3, 4)), np.ones((5, 4)), {"k": 1, "bank_chunk": 0}, "bank_chunk"),
    ],
)
def test_user_errors(queries, bank, kwargs, message):
    with pytest.raises(SemsadError, match=message):
        top_k_cosine(queries, bank, **kwargs)


def test_mesh_without_data_axis_is_an_error():
    mesh = Mesh(np.array(jax.devices()[:4]), ("model",))
    with pytest.raises(SemsadError, match="'data'"):
        top_k_cosine(np.ones((4, 2)), np.ones((4, 2)), 1, mesh=mesh)


def test_pooled_neighbourhoods_are_the_nearest_within_a_random_pool():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 8)).astype(np.float32)
    k, pool = 4, 50
    got = pooled_neighbourhoods(bank, k, pool, seed=1, block=100)
    assert got.shape == (300, k) and got.dtype == np.int32
    assert not (got == np.arange(300)[:, None]).any()
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    # replay the pools: block b draws `pool` rows; the neighbours are its k best others
    replay = np.random.default_rng(1)
    for start in range(0, 300, 100):
        candidates = np.sort(replay.choice(300, size=pool, replace=False))
        for i in range(start, start + 100):
            others = candidates[candidates != i]
            best = others[np.argsort(-(unit[others] @ unit[i]), kind="stable")[:k]]
            assert set(got[i]) == set(best)
    # pool 0, or a pool as large as the bank: the whole bank
    np.testing.assert_array_equal(
        pooled_neighbourhoods(bank, k, 0), semantic_neighbourhoods(bank, k)
    )
    np.testing.assert_array_equal(
        pooled_neighbourhoods(bank, k, 10_000), semantic_neighbourhoods(bank, k)
    )
    # a whole-bank search finds closer neighbours than a small pool
    sims = lambda nb: np.mean(np.sum(unit[:, None, :] * unit[nb], axis=-1))
    assert sims(semantic_neighbourhoods(bank, k)) > sims(got)


def test_label_neighbourhoods_share_the_class():
    labels = np.repeat(np.arange(3), [5, 2, 9])
    got = label_neighbourhoods(labels, 4, seed=0)
    assert got.shape == (16, 4) and not (got == np.arange(16)[:, None]).any()
    assert np.all(labels[got] == labels[:, None])
    with pytest.raises(SemsadError, match="labelled training set"):
        label_neighbourhoods(np.full(4, -1), 2)
    with pytest.raises(SemsadError, match="one training image"):
        label_neighbourhoods(np.array([0, 0, 1]), 1)
