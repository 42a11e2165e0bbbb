"""Discriminator stage: feature bank, step wiring, sharding, resume, scores and clear errors."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from configs import smoke
from semsad_jax import bank as bank_lib
from semsad_jax import parallel, pipeline, train_discriminator, train_encoder
from semsad_jax.checkpoints import StageCheckpoints, write_json
from semsad_jax.errors import SemsadError
from semsad_jax.trainer import Interrupted


def _config(**disc):
    c = smoke.get_config()
    for k, v in disc.items():
        c.discriminator[k] = v
    return c


@pytest.fixture(scope="module")
def train_set():
    return pipeline.load_train_set(smoke.get_config())


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A workdir holding a finished smoke encoder, saved once for the module.

    Saved untrained, as the encoder stage saves a finished run (Orbax state + stage.json): training
    it would compile the SimCLR augmentation and cost more than this whole module; the discriminator
    stage only needs some encoder to restore.
    """
    workdir = tmp_path_factory.mktemp("enc")
    config = smoke.get_config()
    mesh = parallel.make_mesh()
    _, _, state = train_encoder.init_state(config, 4, mesh)
    ckpts = StageCheckpoints(str(workdir / "encoder"), keep=1)
    ckpts.save(4, state)
    ckpts.close()
    identity = train_encoder.encoder_identity(config)
    write_json(
        str(workdir / "encoder" / "stage.json"),
        {"identity": identity, "total_steps": 4, "finished": True},
    )
    return workdir


def _workdir_with_encoder(encoder_dir, path):
    shutil.copytree(encoder_dir / "encoder", path / "encoder")
    return path


def test_bank_features_neighbours_and_round_trip(encoder_dir, train_set, tmp_path):
    config = _config()
    workdir = _workdir_with_encoder(encoder_dir, tmp_path / "w")
    bank = bank_lib.build_bank(config, str(workdir), train_set, mesh=parallel.make_mesh())
    n, k, dim = len(train_set), config.discriminator.neighbours, config.encoder.out_dim
    assert bank.features.shape == (n, dim) and bank.features.dtype == np.float32
    assert bank.neighbours.shape == (n, k) and bank.neighbours.dtype == np.int32
    np.testing.assert_allclose(np.linalg.norm(bank.features, axis=1), 1.0, atol=1e-5)
    # features = the encoder in inference mode on the raw images, normalised (plain nnx call)
    graphdef, params, stats = train_encoder.load_encoder(str(workdir), config)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    z = np.asarray(model(train_set.images.astype(np.float32) / 255.0))
    np.testing.assert_allclose(
        bank.features, z / np.linalg.norm(z, axis=1, keepdims=True), atol=1e-5
    )
    # neighbourhoods = the k most cosine-similar OTHER images (numpy reference)
    sims = bank.features @ bank.features.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    agree = np.mean([set(a) == set(b) for a, b in zip(bank.neighbours, expected)])
    assert agree >= 0.95  # float ties may order differently
    assert not np.any(bank.neighbours == np.arange(n)[:, None])
    meta = json.loads((workdir / "bank" / "bank.json").read_text())
    assert meta["num_images"] == n and meta["neighbours"] == k and meta["feature_dim"] == dim
    assert meta["image_size"] == 8 and meta["train_spec"] == config.data.train
    assert meta["build_seconds"] >= meta["features_seconds"] >= 0
    # the bank travels without the training data or the encoder
    shutil.copytree(workdir / "bank", tmp_path / "elsewhere" / "bank")
    loaded = bank_lib.load_bank(str(tmp_path / "elsewhere"))
    for name in ("features", "neighbours", "images", "labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(bank, name))
    np.testing.assert_array_equal(loaded.images, train_set.images)
    np.testing.assert_array_equal(loaded.labels, train_set.labels)
    # a fresh bank is reused; other neighbourhood sizes rebuild it
    mtime = (workdir / "bank" / "bank.json").stat().st_mtime_ns
    bank_lib.build_bank(config, str(workdir), train_set, mesh=parallel.make_mesh())
    assert (workdir / "bank" / "bank.json").stat().st_mtime_ns == mtime
    rebuilt = bank_lib.build_bank(_config(neighbours=2), str(workdir), train_set)
    np.testing.assert_array_equal(rebuilt.neighbours, bank.neighbours[:, :2])
    with pytest.raises(SemsadError, match="run --mode=discriminator"):
        bank_lib.load_bank(str(tmp_path / "empty"))


def _two_steps(config, images, neighbours, mesh, fast_compile=False):
    n = len(images)
    spe = train_discriminator.steps_per_epoch(config, n)
    graphdef, tx, state = train_discriminator.init_state(config, spe, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = train_discriminator.make_train_step(graphdef, tx, config, n, mesh, shardings)
    imgs, nbrs = parallel.replicate(images, mesh), parallel.replicate(neighbours, mesh)
    if fast_compile:  # same program, half the compile time: no LLVM optimisation of the CPU code
        lowered = step_fn.lower(state, imgs, nbrs, np.int32(0))
        step_fn = lowered.compile({"xla_backend_optimization_level": 0})
    metrics = []
    for step in range(2):
        state, m = step_fn(state, imgs, nbrs, np.int32(step))
        metrics.append({k: float(v) for k, v in m.items()})
    return parallel.to_host(state["params"]), metrics


def test_four_devices_match_one_device_and_params_move(train_set):
    assert jax.device_count() == 4
    config = _config(epochs=2, checkpoint_every_steps=3)  # as below: the compiled step is shared
    rng = np.random.default_rng(0)
    n = len(train_set)
    neighbours = np.stack(
        [rng.choice(np.delete(np.arange(n), i), 4, replace=False) for i in range(n)]
    )
    p4, m4 = _two_steps(config, train_set.images, neighbours, parallel.make_mesh())
    one = parallel.make_mesh(jax.devices()[:1])
    p1, m1 = _two_steps(config, train_set.images, neighbours, one, fast_compile=True)
    for a, b in zip(m4, m1):
        assert a["finite"] == 1.0 and 1.0 <= a["gamma"] <= 10.0 and a["gamma"] == b["gamma"]
        for key in ("loss", "s_pos", "s_neg"):
            assert np.isfinite(a[key])
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert m4[0]["gamma"] != m4[1]["gamma"]  # a new gamma each step
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    p0 = train_discriminator.split_model(train_discriminator.build_discriminator(config))[1]
    moved = [
        np.abs(a - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p0))
    ]
    assert max(moved) > 1e-6


def test_train_report_reuse_scores_and_resume(encoder_dir, train_set, tmp_path, monkeypatch):
    config = _config(epochs=2, checkpoint_every_steps=3)  # 8 steps, checkpoints at 3, 6, 8
    wa = _workdir_with_encoder(encoder_dir, tmp_path / "a")
    summary = pipeline.run(config, str(wa), "discriminator")["discriminator"]
    stage = wa / "discriminator"
    assert summary["finished"] and summary["total_steps"] == 8
    assert summary["heldout_pairs"] == 32
    assert np.isfinite(summary["heldout_mean_s_pos"]) and np.isfinite(summary["heldout_mean_s_neg"])
    recorded = json.loads((stage / "stage.json").read_text())
    assert recorded["heldout_mean_s_pos"] == summary["heldout_mean_s_pos"]
    assert recorded["identity"]["encoder.width"] == 4
    assert sorted(int(p.name) for p in stage.iterdir() if p.name.isdigit()) == [3, 6, 8]
    lines = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 9))
    assert all(r["images_per_s"] > 0 and np.isfinite(r["s_pos"] + r["s_neg"]) for r in lines)
    # a finished stage is reused
    mtime = (stage / "8").stat().st_mtime
    assert pipeline.run(config, str(wa), "discriminator")["discriminator"]["finished"]
    assert (stage / "8").stat().st_mtime == mtime
    # scores of the restored model: per-pair, independent of batching
    graphdef, params, stats = train_discriminator.load_discriminator(str(wa), config)
    refs, partners = train_set.images[:10], train_set.images[10:20]
    kw = dict(mesh=parallel.make_mesh(), dtype=np.float32)
    s8 = train_discriminator.discriminator_scores(
        graphdef, params, stats, refs, partners, batch_size=8, **kw
    )
    s4 = train_discriminator.discriminator_scores(
        graphdef, params, stats, refs, partners, batch_size=4, **kw
    )
    assert s8.shape == (10,) and s8.dtype == np.float32
    np.testing.assert_allclose(s8, s4, rtol=1e-5, atol=1e-5)
    model = nnx.merge(graphdef, params, stats)
    model.eval()
    x = np.concatenate([refs, partners], axis=-1).astype(np.float32) / 255.0
    np.testing.assert_allclose(s8, np.asarray(model(x)).sum(axis=1), rtol=1e-4, atol=1e-4)

    # interrupted by SIGTERM after step 4, resumed: same parameters as the uninterrupted run
    wb = _workdir_with_encoder(encoder_dir, tmp_path / "b")
    real = train_discriminator.make_train_step

    def interrupted_after_step_4(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def wrapped(state, images, neighbours, step):
            out = step_fn(state, images, neighbours, step)
            if int(step) == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return wrapped

    monkeypatch.setattr(train_discriminator, "make_train_step", interrupted_after_step_4)
    with pytest.raises(Interrupted, match="step 5"):
        train_discriminator.train_discriminator(config, str(wb), train_set)
    assert (wb / "discriminator" / "5").is_dir()
    monkeypatch.setattr(train_discriminator, "make_train_step", real)
    train_discriminator.train_discriminator(config, str(wb), train_set)
    resumed = train_discriminator.load_discriminator(str(wb), config)[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_or_mismatched_encoder_is_a_clear_error(encoder_dir, train_set, tmp_path):
    with pytest.raises(SemsadError, match=r"no trained encoder.*run --mode=encoder"):
        train_discriminator.train_discriminator(_config(), str(tmp_path / "none"), train_set)
    workdir = _workdir_with_encoder(encoder_dir, tmp_path / "w")
    other = _config()
    other.encoder.width = 8
    with pytest.raises(SemsadError, match=r"encoder\.width"):
        train_discriminator.train_discriminator(other, str(workdir), train_set)
    with pytest.raises(SemsadError, match="no trained discriminator"):
        train_discriminator.load_discriminator(str(workdir), _config())
    assert not (workdir / "discriminator").exists()
