"""Losses against plain numpy references, known answers, stability, sampling and sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from semsad_jax.errors import SemsadError
from semsad_jax.method.losses import (
    contrastive_loss,
    discriminator_loss,
    discriminator_objective,
    infonce,
    ntxent,
    pair_score,
    sample_gamma,
)

TEMPERATURES = [0.1, 0.5, 1.0]
# Jitted once per shape (cheaper than compiling every eager op); temperature and gamma are traced.
_contrastive = jax.jit(contrastive_loss, static_argnums=0)
_objective = jax.jit(discriminator_objective)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# ---- numpy references (float64, written directly from the definitions) -------------------------


def _np_normalize(z):
    z = np.asarray(z, np.float64)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _np_infonce(z1, z2, t):
    a, b = _np_normalize(z1), _np_normalize(z2)
    total = 0.0
    for i in range(len(a)):
        logits = a[i] @ b.T / t
        total += -math.log(math.exp(logits[i]) / np.exp(logits).sum())
    return total / len(a)


def _np_ntxent(z1, z2, t):
    z = _np_normalize(np.concatenate([z1, z2]))
    n, batch = len(z), len(z1)
    total = 0.0
    for i in range(n):
        partner = (i + batch) % n
        denom = sum(math.exp(z[i] @ z[j] / t) for j in range(n) if j != i)
        total += -math.log(math.exp(z[i] @ z[partner] / t) / denom)
    return total / n


def _np_objective(s_pos, s_neg, gamma):
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    a_pos = np.asarray(s_pos, np.float64) - math.log(gamma)
    a_neg = np.asarray(s_neg, np.float64) - math.log(gamma)
    return np.log(sig(a_pos)).mean() + gamma * np.log(1.0 - sig(a_neg)).mean()


# ---- contrastive losses ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_infonce_matches_numpy(temperature):
    z1, z2 = _rand(6, 8, seed=1), _rand(6, 8, seed=2)
    got = float(_contrastive("infonce", z1, z2, temperature))
    assert got == pytest.approx(_np_infonce(z1, z2, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_ntxent_matches_numpy(temperature):
    z1, z2 = _rand(6, 8, seed=3), _rand(6, 8, seed=4)
    got = float(_contrastive("ntxent", z1, z2, temperature))
    assert got == pytest.approx(_np_ntxent(z1, z2, temperature), rel=1e-5)


def test_known_answers_for_orthonormal_views():
    batch = 6
    z = jnp.eye(batch, 8)  # identical views, mutually orthogonal: positive logit 1/t, others 0
    t = 0.5
    expected = math.log(math.exp(2) + batch - 1) - 2
    assert float(jax.jit(infonce)(z, z, t)) == pytest.approx(expected, 1e-6)
    # NT-Xent: per view 2B - 1 candidates: the partner (2) and 2B - 2 orthogonal ones (0).
    expected = math.log(math.exp(2) + 2 * batch - 2) - 2
    assert float(jax.jit(ntxent)(z, z, t)) == pytest.approx(expected, 1e-6)


@pytest.mark.parametrize("name", ["infonce", "ntxent"])
def test_invariant_to_input_scaling(name):
    z1, z2 = _rand(6, 8, seed=5), _rand(6, 8, seed=6)
    row_scales = np.random.default_rng(7).uniform(0.01, 100.0, size=(6, 1)).astype(np.float32)
    base = float(_contrastive(name, z1, z2, 0.5))
    scaled = float(_contrastive(name, z1 * row_scales, z2 * 3.0, 0.5))
    assert scaled == pytest.approx(base, rel=1e-5)


@pytest.mark.parametrize("name", ["infonce", "ntxent"])
def test_bfloat16_inputs_give_float32_loss_and_finite_gradients(name):
    z1, z2 = _rand(6, 8, seed=8), _rand(6, 8, seed=9)
    ref = float(_contrastive(name, z1, z2, 0.1))
    got = _contrastive(name, jnp.asarray(z1, jnp.bfloat16), jnp.asarray(z2, jnp.bfloat16), 0.1)
    assert got.dtype == jnp.float32 and got.shape == ()
    assert float(got) == pytest.approx(ref, rel=0.05)
    grads = jax.jit(jax.grad(lambda a: contrastive_loss(name, a, z2, 0.1)))(z1)
    assert np.all(np.isfinite(np.asarray(grads))) and np.abs(np.asarray(grads)).max() > 0


def test_loss_over_a_sharded_batch_uses_the_global_batch():
    devices = jax.devices()
    assert len(devices) == 4  # conftest's fake CPU devices
    mesh = Mesh(np.asarray(devices), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    z1, z2 = _rand(8, 8, seed=10), _rand(8, 8, seed=11)
    for name in ("infonce", "ntxent"):
        z1_sharded, z2_sharded = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
        assert len(z1_sharded.addressable_shards) == 4
        sharded = _contrastive(name, z1_sharded, z2_sharded, 0.5)
        reference = {"infonce": _np_infonce, "ntxent": _np_ntxent}[name](z1, z2, 0.5)
        assert float(sharded) == pytest.approx(reference, 1e-5)


def test_contrastive_errors():
    z = jnp.ones((2, 3))
    with pytest.raises(SemsadError):
        contrastive_loss("triplet", z, z, 0.5)
    with pytest.raises(SemsadError):
        contrastive_loss("infonce", z, z, 0.0)
    with pytest.raises(ValueError):
        infonce(z, jnp.ones((3, 3)), 0.5)


# ---- discriminator objective ---------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 2.5, 9.0])
@pytest.mark.parametrize("k", [None, 3])
def test_objective_matches_numpy(gamma, k):
    shape_pos, shape_neg = ((6,), (4,)) if k is None else ((6, k), (4, k))
    s_pos, s_neg = _rand(*shape_pos, seed=12) * 3, _rand(*shape_neg, seed=13) * 3
    got = _objective(s_pos, s_neg, gamma)
    assert got.dtype == jnp.float32 and got.shape == ()
    assert float(got) == pytest.approx(_np_objective(s_pos, s_neg, gamma), rel=1e-5)
    loss = discriminator_loss(jnp.asarray(s_pos), jnp.asarray(s_neg), gamma)  # eager
    assert float(loss) == pytest.approx(-float(got), rel=1e-6)


def test_multi_logit_objective_is_the_mean_of_per_logit_objectives():
    s_pos, s_neg = _rand(6, 3, seed=14), _rand(4, 3, seed=15)
    per_logit = [_np_objective(s_pos[:, j], s_neg[:, j], 3.0) for j in range(3)]
    assert float(_objective(s_pos, s_neg, 3.0)) == pytest.approx(np.mean(per_logit), rel=1e-5)


def test_objective_known_answer_and_stability():
    gamma = 4.0
    at_threshold = jnp.full((3,), math.log(gamma))  # a = 0: log(1/2) for both terms
    got = float(discriminator_objective(at_threshold, at_threshold, gamma))
    assert got == pytest.approx(-(1 + gamma) * math.log(2), rel=1e-6)
    # Extreme logits: no inf/nan; a confident correct discriminator has J ~ 0, a wrong one ~ -|a|.
    big = jnp.asarray([300.0, 500.0], jnp.bfloat16)
    assert float(discriminator_objective(big, -big, gamma)) == pytest.approx(0.0, abs=1e-6)
    wrong = float(discriminator_objective(-big, big, gamma))
    expected = -np.mean([300.0, 500.0]) - math.log(gamma) - gamma * (400.0 - math.log(gamma))
    assert wrong == pytest.approx(expected, rel=1e-4)
    grads = jax.grad(discriminator_loss, argnums=(0, 1))(
        -big.astype(jnp.float32), big.astype(jnp.float32), gamma
    )
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_objective_shape_errors():
    with pytest.raises(ValueError):
        discriminator_objective(jnp.ones((4, 2)), jnp.ones((4,)), 2.0)
    with pytest.raises(ValueError):
        discriminator_objective(jnp.ones((4, 2)), jnp.ones((4, 3)), 2.0)


# ---- gamma sampling and scoring ------------------------------------------------------------------


def _draws(mode, gamma_max, n=4000):
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jax.jit(jax.vmap(lambda k: sample_gamma(k, mode, gamma_max)))(keys))


def test_uniform_gamma_range_and_mean():
    draws = _draws("uniform", 10.0)
    assert draws.dtype == np.float32
    assert draws.min() >= 1.0 and draws.max() < 10.0
    assert draws.mean() == pytest.approx(5.5, abs=0.2)  # std of the mean ~0.04
    assert len(np.unique(draws)) > 3900  # continuous
    assert np.mean(draws < 5.5) == pytest.approx(0.5, abs=0.05)


def test_integer_gamma_values_and_mean():
    draws = _draws("integer", 10.0)
    assert draws.dtype == np.float32
    np.testing.assert_array_equal(draws, np.round(draws))
    assert set(np.unique(draws).tolist()) == set(range(1, 10))  # authors: randint(1, 10)
    assert draws.mean() == pytest.approx(5.0, abs=0.2)
    assert set(np.unique(_draws("integer", 3, n=200)).tolist()) == {1.0, 2.0}


def test_gamma_errors():
    key = jax.random.key(0)
    with pytest.raises(SemsadError):
        sample_gamma(key, "normal")
    with pytest.raises(SemsadError):
        sample_gamma(key, "uniform", 1.0)
    with pytest.raises(SemsadError):
        sample_gamma(key, "integer", 1.0)
    with pytest.raises(SemsadError):
        sample_gamma(key, "integer", 9.5)


def test_pair_score():
    logits = _rand(5, 3, seed=18)
    np.testing.assert_allclose(np.asarray(pair_score(logits)), logits.sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(pair_score(logits[:, 0])), logits[:, 0])
    assert pair_score(jnp.asarray(logits, jnp.bfloat16)).dtype == jnp.float32
    with pytest.raises(ValueError):
        pair_score(jnp.ones((2, 2, 2)))
