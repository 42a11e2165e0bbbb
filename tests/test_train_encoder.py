"""Encoder stage: sharded steps match one device, resume equals an uninterrupted run, CLI works."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import (
    features_by_hand,
    init_state,
    load_encoder,
    load_test_set,
    load_train_set,
    sigterm_after_step,
    train_encoder,
    unit_rows,
)

from semsad_jax import parallel
from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.models import build, split_model
from semsad_jax.run import run
from semsad_jax.train import encoder as encoder_stage
from semsad_jax.train.loop import Interrupted
from semsad_jax.train.step import StepSetup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**encoder):
    c = smoke.get_config()
    for k, v in encoder.items():
        c.encoder[k] = v
    return c


@pytest.fixture(scope="module")
def train_set():
    return load_train_set(smoke.get_config())


def _two_steps(config, train, mesh):
    spe = len(train) // config.encoder.batch_size
    graphdef, tx, state = init_state("encoder", config, spe, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = encoder_stage.make_train_step(
        StepSetup(graphdef, tx, shardings, config.encoder, len(train), mesh, seed=config.seed)
    )
    images = parallel.replicate(train.images, mesh)
    losses = []
    for step in range(2):
        state, metrics = step_fn(state, images, np.int32(step))
        losses.append(float(metrics["loss"]))
    return parallel.to_host(state["params"]), losses


def test_four_devices_match_one_device(train_set):
    assert jax.device_count() == 4
    config = _config()
    p4, l4 = _two_steps(config, train_set, parallel.make_mesh())
    p1, l1 = _two_steps(config, train_set, parallel.make_mesh(jax.devices()[:1]))
    np.testing.assert_allclose(l4, l1, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # the two steps changed the parameters
    p0 = split_model(build("encoder", config.encoder, seed=config.seed))[1]
    moved = [
        np.abs(a - np.asarray(b)).max() for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p0))
    ]
    assert max(moved) > 0


def test_batch_not_divisible_by_devices(train_set, tmp_path):
    with pytest.raises(SemsadError, match="not divisible by the 4 devices"):
        train_encoder(_config(batch_size=18), tmp_path, train_set)


def test_train_writes_checkpoints_metrics_and_knn(train_set, tmp_path):
    config = _config()
    test = load_test_set(config)
    summary = run(config, str(tmp_path), "encoder")["encoder"]
    stage = tmp_path / "encoder"
    assert summary["finished"] and summary["total_steps"] == 4
    for key in ("knn_accuracy", "pixel_knn_accuracy"):  # a count of the 32 test images
        assert summary[key] * 32 == pytest.approx(round(summary[key] * 32)), key
    assert json.loads((tmp_path / "config.json").read_text())["encoder"]["width"] == 4
    steps = sorted(int(p.name) for p in stage.iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    lines = [json.loads(x) for x in (stage / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in lines)
    # restorable: the recorded kNN accuracy is the restored encoder's, by a numpy reference (the
    # weighted cosine kNN of semsad_jax.method.knn on features computed by hand)
    encoder = load_encoder(str(tmp_path), config)

    def knn_by_hand(embed) -> float:
        sims = embed(test.images) @ embed(train_set.images).T
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, : config.encoder.knn_k]
        rows = np.arange(len(test))[:, None]
        votes = np.zeros((len(test), 3))
        weights = np.exp(sims[rows, nearest] / config.encoder.knn_temperature)
        np.add.at(votes, (np.broadcast_to(rows, nearest.shape), train_set.labels[nearest]), weights)
        return np.mean(np.argmax(votes, axis=1) == test.labels)

    def backbone_by_hand(images_u8):  # the pooled features before the head, L2-normalised
        model = nnx.merge(*encoder)
        model.eval()
        return unit_rows(np.asarray(model.features(images_u8.astype(np.float32) / 255.0)))

    assert summary["knn_accuracy"] == pytest.approx(
        knn_by_hand(lambda x: features_by_hand(encoder, x))
    )
    expected = knn_by_hand(backbone_by_hand)
    assert summary["knn_accuracy_penultimate"] == pytest.approx(expected)
    # a second run reuses the finished stage instead of retraining
    mtime = (stage / "4").stat().st_mtime
    run(config, str(tmp_path), "encoder")
    assert (stage / "4").stat().st_mtime == mtime
    # another architecture in the same workdir is refused, nothing overwritten
    with pytest.raises(SemsadError, match=r"encoder\.width"):
        run(_config(width=8), str(tmp_path), "encoder")
    assert (stage / "4").exists()
    # so is every setting that changes the weights, each named, with the way out
    recorded = (tmp_path / "config.json").read_text()
    with pytest.raises(
        SemsadError, match=r"encoder\.temperature=1\.0 \(config: 0\.5\).*--overwrite"
    ):
        run(_config(temperature=0.5), str(tmp_path), "encoder")
    changed = _config(learning_rate=0.1, augment="t_pos")
    changed.seed = 7
    with pytest.raises(SemsadError) as err:
        run(changed, str(tmp_path), "encoder")
    for key in ("encoder.augment", "encoder.learning_rate", "seed"):
        assert key in str(err.value)
    assert (tmp_path / "config.json").read_text() == recorded  # refused before writing
    # more epochs of the same encoder: resumed from its last step, not refused
    longer = run(_config(epochs=2), str(tmp_path), "encoder")["encoder"]
    assert longer["finished"] and longer["total_steps"] == 8
    steps = json.loads((stage / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert steps == 8


def test_sigterm_saves_and_resume_equals_uninterrupted(train_set, tmp_path, monkeypatch):
    config = _config(epochs=2, checkpoint_every_steps=3)  # 8 steps, checkpoints at 3, 6, 8
    full = train_encoder(config, tmp_path / "a", train_set)
    assert full["total_steps"] == 8
    expected = load_encoder(str(tmp_path / "a"), config)[1]

    with (
        sigterm_after_step(monkeypatch, encoder_stage, 4),
        pytest.raises(Interrupted, match="step 5"),
    ):
        train_encoder(config, tmp_path / "b", train_set)
    assert (tmp_path / "b" / "encoder" / "5").is_dir()
    train_encoder(config, tmp_path / "b", train_set)
    resumed = load_encoder(str(tmp_path / "b"), config)[1]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _main(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_cli_encoder_and_clear_errors(tmp_path):
    out = _main(
        "--config=configs/smoke.py", f"--workdir={tmp_path}", "--mode=encoder",
        "--config.encoder.epochs=1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "encoder" / "stage.json").exists()

    bad_path = _main(
        "--config=configs/smoke.py", f"--workdir={tmp_path / 'x'}", "--mode=encoder",
        "--config.data.train=folder:/no/such/dir",
    )  # fmt: skip
    assert bad_path.returncode == 2
    last = bad_path.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "/no/such/dir" in last
    assert "Traceback" not in bad_path.stderr

    no_encoder = _main("--config=configs/smoke.py", f"--workdir={tmp_path / 'y'}", "--mode=eval")
    assert no_encoder.returncode == 2 and "Traceback" not in no_encoder.stderr
