"""Discriminator stage: feature bank, step wiring, sharding, resume, scores and clear errors.

Uses the shared smoke workdir of the ``smoke_trained`` fixture (conftest.py: smoke encoder, then the
discriminator stage, run once per test session through ``semsad_jax.run.run``); jitted discriminator
steps are cached per process, so the steps below mostly reuse its compilation.
"""

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import (
    apply_by_hand,
    copy_of,
    features_by_hand,
    identities,
    init_state,
    load_discriminator,
    load_encoder,
    load_test_set,
    load_train_set,
    train_discriminator,
)
from sklearn.metrics import roc_auc_score

from semsad_jax import parallel
from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.method.pairs import sample_pairs
from semsad_jax.method.scoring import discriminator_scores
from semsad_jax.models import build, split_model
from semsad_jax.run import run
from semsad_jax.train import discriminator as disc_stage
from semsad_jax.train.loop import Interrupted
from semsad_jax.train.monitors import HELDOUT_KEY
from semsad_jax.train.step import StepSetup
from semsad_jax.workdir import bank as bank_lib


def _config(**disc):
    c = smoke.get_config()
    for k, v in disc.items():
        c.discriminator[k] = v
    return c


@pytest.fixture(scope="module")
def train_set():
    return load_train_set(smoke.get_config())


@pytest.fixture(scope="module")
def trained(smoke_trained):
    """The shared smoke workdir: finished encoder, bank and discriminator (never modified)."""
    return Path(smoke_trained)


def _with_encoder(trained, path):
    """A new workdir holding only a copy of the trained encoder."""
    shutil.copytree(trained / "encoder", path / "encoder")
    return path


def test_bank_features_neighbours_and_round_trip(trained, train_set, tmp_path):
    config = _config()
    n, k, dim = len(train_set), config.discriminator.neighbours, config.encoder.out_dim
    # the bank travels without the training data or the encoder
    shutil.copytree(trained / "bank", tmp_path / "elsewhere" / "bank")
    bank = bank_lib.load_bank(str(tmp_path / "elsewhere"))
    assert bank.features.shape == (n, dim) and bank.features.dtype == np.float32
    assert bank.neighbours.shape == (n, k) and bank.neighbours.dtype == np.int32
    np.testing.assert_array_equal(bank.images, train_set.images)
    np.testing.assert_array_equal(bank.labels, train_set.labels)
    np.testing.assert_allclose(np.linalg.norm(bank.features, axis=1), 1.0, atol=1e-5)
    # features = the encoder in inference mode on the raw images, normalised (plain nnx call)
    graphdef, params, stats = load_encoder(str(trained), config)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    z = np.asarray(model(train_set.images.astype(np.float32) / 255.0))
    expected_features = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(bank.features, expected_features, atol=1e-5)
    # neighbourhoods = the k most cosine-similar OTHER images (numpy reference)
    sims = bank.features @ bank.features.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    agree = np.mean([set(a) == set(b) for a, b in zip(bank.neighbours, expected)])
    assert agree >= 0.95  # float ties may order differently
    assert not np.any(bank.neighbours == np.arange(n)[:, None])
    meta = bank.meta
    assert meta["num_images"] == n and meta["neighbours"] == k and meta["feature_dim"] == dim
    assert meta["image_size"] == 8 and meta["train_spec"] == config.data.train
    assert meta["build_seconds"] >= meta["features_seconds"] >= 0
    # a fresh bank is reused; another neighbourhood size rebuilds it
    workdir = _with_encoder(trained, tmp_path / "w")
    shutil.copytree(trained / "bank", workdir / "bank")
    mtime = (workdir / "bank" / "bank.json").stat().st_mtime_ns
    encoder = load_encoder(str(trained), config)
    ident = identities(config)["encoder"]
    bank_lib.build_bank(
        str(workdir), config.discriminator, train_set, encoder, encoder_identity=ident
    )
    assert (workdir / "bank" / "bank.json").stat().st_mtime_ns == mtime
    rebuilt = bank_lib.build_bank(
        str(workdir),
        _config(neighbours=2).discriminator,
        train_set,
        encoder,
        encoder_identity=ident,
    )
    np.testing.assert_array_equal(rebuilt.neighbours, bank.neighbours[:, :2])
    np.testing.assert_array_equal(bank_lib.load_bank(str(workdir)).neighbours, rebuilt.neighbours)
    with pytest.raises(SemsadError, match="run --mode=discriminator"):
        bank_lib.load_bank(str(tmp_path / "empty"))


def _two_steps(config, images, neighbours, mesh):
    n = len(images)
    spe = disc_stage.steps_per_epoch(config.discriminator, n)
    graphdef, tx, state = init_state("discriminator", config, spe, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = disc_stage.make_train_step(
        StepSetup(graphdef, tx, shardings, config.discriminator, n, mesh, seed=config.seed)
    )
    imgs, nbrs = parallel.replicate(images, mesh), parallel.replicate(neighbours, mesh)
    metrics = []
    for step in range(2):
        state, m = step_fn(state, imgs, nbrs, np.int32(step))
        metrics.append({k: float(v) for k, v in m.items()})
    return parallel.to_host(state["params"]), metrics


def test_four_devices_match_one_device_and_params_move(train_set):
    assert jax.device_count() == 4
    config = _config()  # the smoke config: the 4-device step is the one smoke_trained compiled
    rng = np.random.default_rng(0)
    n = len(train_set)
    neighbours = np.stack(
        [rng.choice(np.delete(np.arange(n), i), 4, replace=False) for i in range(n)]
    )
    p4, m4 = _two_steps(config, train_set.images, neighbours, parallel.make_mesh())
    one = parallel.make_mesh(jax.devices()[:1])
    p1, m1 = _two_steps(config, train_set.images, neighbours, one)
    for a, b in zip(m4, m1):
        assert a["finite"] == 1.0 and 1.0 <= a["gamma"] <= 10.0 and a["gamma"] == b["gamma"]
        for key in ("loss", "s_pos", "s_neg"):
            assert np.isfinite(a[key])
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert m4[0]["gamma"] != m4[1]["gamma"]  # a new gamma each step
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    p0 = split_model(build("discriminator", config.discriminator, seed=config.seed))[1]
    moved = [
        np.abs(a - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p0))
    ]
    assert max(moved) > 1e-6


def test_other_seed_shares_the_compiled_step_but_not_the_randomness(train_set):
    """The seed's key is an argument: a second seed neither traces nor compiles a new step."""
    config, other = _config(), _config()
    other.seed = config.seed + 1
    n = len(train_set)
    neighbours = np.tile(np.arange(1, 5), (n, 1)) % n
    mesh = parallel.make_mesh()
    _, m_a = _two_steps(config, train_set.images, neighbours, mesh)
    traced = []
    real = disc_stage._compile_step
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(disc_stage, "_compile_step", lambda *a: traced.append(a) or real(*a))
        _, m_b = _two_steps(other, train_set.images, neighbours, mesh)
    assert traced == []  # served from the cache although the seed differs
    assert m_a[0]["gamma"] != m_b[0]["gamma"]  # ... and drawing from the other seed's key


def test_stage_outputs_reuse_and_scores(trained, train_set, tmp_path):
    config = _config()
    stage = trained / "discriminator"
    summary = json.loads((stage / "stage.json").read_text())
    assert summary["finished"] and summary["total_steps"] == 4 and summary["heldout_pairs"] == 32
    # the held-out report against a reference: the pairs sampled as documented (sample_pairs, its
    # own tests in test_pairs.py), the restored discriminator applied by hand, scikit-learn's AUROC
    # (whether the discriminator learns is tests/test_learning.py's question)
    expected = _heldout_by_hand(trained, config)
    assert summary["heldout_mean_s_pos"] == pytest.approx(expected["pos"].mean(), rel=1e-4)
    assert summary["heldout_mean_s_neg"] == pytest.approx(expected["neg"].mean(), rel=1e-4)
    labels = np.r_[np.ones(32), np.zeros(32)]
    auroc = roc_auc_score(labels, np.r_[expected["pos"], expected["neg"]])
    assert summary["heldout_pair_auroc"] == pytest.approx(auroc)
    assert summary["identity"]["encoder.width"] == 4
    assert summary["identity"]["discriminator.pairs"] == "paper"
    assert sorted(int(p.name) for p in stage.iterdir() if p.name.isdigit()) == [2, 4]
    lines = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(r["images_per_s"] > 0 and np.isfinite(r["s_pos"] + r["s_neg"]) for r in lines)
    assert all(1.0 <= r["gamma"] <= 10.0 for r in lines)
    # a finished stage is reused: no training step built, no held-out report recomputed
    copy = Path(copy_of(trained, tmp_path / "copy"))
    mtime = (copy / "discriminator" / "4").stat().st_mtime

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished discriminator stage was trained or reported again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(disc_stage, "bound_train_step", must_not_run)
        mp.setattr(disc_stage, "heldout_report", must_not_run)
        assert run(config, str(copy), "discriminator")["discriminator"]["finished"]
    assert (copy / "discriminator" / "4").stat().st_mtime == mtime
    # scores of the restored model: per pair, independent of batching, = the model's summed logits
    graphdef, params, stats = load_discriminator(str(trained), config)
    refs, partners = train_set.images[:10], train_set.images[10:20]
    kw = dict(mesh=parallel.make_mesh(), dtype=np.float32)
    scores = discriminator_scores
    s8 = scores(graphdef, params, stats, refs, partners, batch_size=8, **kw)
    s4 = scores(graphdef, params, stats, refs, partners, batch_size=4, **kw)
    assert s8.shape == (10,) and s8.dtype == np.float32
    np.testing.assert_allclose(s8, s4, rtol=1e-5, atol=1e-5)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    x = np.concatenate([refs, partners], axis=-1).astype(np.float32) / 255.0
    np.testing.assert_allclose(s8, np.asarray(model(x)).sum(axis=1), rtol=1e-4, atol=1e-4)


def _heldout_by_hand(trained, config):
    """Scores of the held-out pairs as heldout_report documents them: neighbourhoods among the test
    images by h (numpy), batches of ``batch_size`` (a multiple of the devices) in the seed's
    permutation, pairs from sample_pairs with key fold_in(fold_in(key(seed), HELDOUT_KEY), b),
    positives and negatives scored by the restored discriminator applied by hand."""
    section, test = config.discriminator, load_test_set(config)
    feats = features_by_hand(load_encoder(str(trained), config), test.images)
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, : int(section.neighbours)]
    batch = min(int(section.batch_size), len(test)) // jax.device_count() * jax.device_count()
    order = np.random.default_rng(config.seed).permutation(len(test))
    key = jax.random.fold_in(jax.random.key(config.seed), HELDOUT_KEY)
    disc = load_discriminator(str(trained), config)
    out = {"pos": [], "neg": []}
    for b in range(len(test) // batch):
        idx = order[b * batch : (b + 1) * batch]
        pairs = sample_pairs(jax.random.fold_in(key, b), test.images, neighbours, idx, section)
        for sign in ("pos", "neg"):
            refs, partners = (np.asarray(pairs[f"{r}_{sign}"]) for r in ("ref", "partner"))
            x = np.concatenate([refs, partners], axis=-1)
            out[sign].append(apply_by_hand(disc, x).sum(axis=1))
    return {sign: np.concatenate(scores) for sign, scores in out.items()}


def test_sigterm_saves_and_resume_equals_uninterrupted(trained, train_set, tmp_path, monkeypatch):
    config = _config()  # 4 steps, checkpoints at 2 and 4
    expected = load_discriminator(str(trained), config)[1]
    workdir = _with_encoder(trained, tmp_path / "b")
    real = disc_stage.make_train_step

    def interrupted_after_step_3(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def wrapped(state, images, neighbours, step):
            out = step_fn(state, images, neighbours, step)
            if int(step) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return wrapped

    monkeypatch.setattr(disc_stage, "make_train_step", interrupted_after_step_3)
    with pytest.raises(Interrupted, match="step 3"):
        train_discriminator(config, workdir, train_set)
    assert (workdir / "discriminator" / "3").is_dir()
    monkeypatch.setattr(disc_stage, "make_train_step", real)
    summary = train_discriminator(config, workdir, train_set)
    assert summary["finished"] and "heldout_mean_s_pos" in summary
    resumed = load_discriminator(str(workdir), config)[1]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_or_mismatched_encoder_is_a_clear_error(trained, train_set, tmp_path):
    with pytest.raises(SemsadError, match=r"no trained encoder.*run --mode=encoder"):
        run(_config(), str(tmp_path / "none"), "discriminator")
    workdir = _with_encoder(trained, tmp_path / "w")
    other = _config()
    other.encoder.width = 8
    with pytest.raises(SemsadError, match=r"encoder\.width=4.*--mode=encoder --overwrite"):
        run(other, str(workdir), "discriminator")
    assert not (workdir / "config.json").exists()  # refused before anything was written
    with pytest.raises(SemsadError, match="no trained discriminator"):
        load_discriminator(str(workdir), _config())
    assert not (workdir / "discriminator").exists()
