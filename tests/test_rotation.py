"""The rotation-prediction detector: transformations, the score by hand, learning, resume, refusal,
the combined detector, and CSI's shifted instances in the encoder (the loss and the negatives)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    apply_by_hand,
    context,
    identities,
    load_test_set,
    load_train_set,
    sigterm_after_step,
)

from semsad_jax import parallel
from semsad_jax.augment.apply import augment_batch
from semsad_jax.augment.presets import get_spec
from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.combine import Combined, parse_components, percentiles
from semsad_jax.method.losses import contrastive_loss
from semsad_jax.method.scoring import transform_scores
from semsad_jax.method.transforms import (
    TRANSFORM_KINDS,
    all_transforms,
    num_transforms,
    transform_list,
    transform_log_likelihood,
)
from semsad_jax.models import build, split_model
from semsad_jax.models.build import TRANSFORM_CLASSES
from semsad_jax.run import run
from semsad_jax.train import encoder as encoder_stage
from semsad_jax.train import rotation as rotation_stage
from semsad_jax.train import step as steps
from semsad_jax.train.loop import Interrupted
from semsad_jax.train.step import StepSetup
from semsad_jax.workdir.restore import restore_network


def _config(**rotation):
    c = smoke.get_config()
    for k, v in rotation.items():
        c.rotation[k] = v
    return c


def _train(config, workdir, train, test=None):
    return rotation_stage.train_rotation(
        config.rotation,
        context(config, workdir),
        train,
        test,
        identity=identities(config)["rotation"],
    )


def _load(workdir, config):
    ids = identities(config)["rotation"]
    return restore_network(str(workdir), "rotation", config.rotation, ids, dtype=config.dtype)


@pytest.fixture(scope="module")
def train_set():
    return load_train_set(smoke.get_config())


# ---- the transformations ------------------------------------------------------------------------


def test_transform_sets_match_the_network_heads():
    for kind in TRANSFORM_KINDS:
        assert num_transforms(kind) == TRANSFORM_CLASSES[kind]
        assert transform_list(kind)[0] == (False, 0, 0, 0)  # the identity is label 0
        assert len(set(transform_list(kind))) == num_transforms(kind)
    with pytest.raises(SemsadError, match=r"unknown rotation.transforms 'spin'"):
        num_transforms("spin")


def test_all_transforms_by_numpy():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)
    out, labels = all_transforms(jnp.asarray(images), "geom")
    out, labels = np.asarray(out), np.asarray(labels)
    assert out.shape == (72 * 3, 8, 8, 2) and out.dtype == np.uint8
    for t, (flip, dx, dy, turns) in enumerate(transform_list("geom")):
        y = images[:, :, ::-1] if flip else images
        # move the content by (dx, dy) quarter sides (2 px here), reflecting at the border
        padded = np.pad(y, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
        y = padded[:, 2 - 2 * dy : 10 - 2 * dy, 2 - 2 * dx : 10 - 2 * dx]
        expected = np.rot90(y, turns, axes=(1, 2))
        np.testing.assert_array_equal(out[t * 3 : (t + 1) * 3], expected)
        assert (labels[t * 3 : (t + 1) * 3] == t).all()
    # what the shifts mean: dy = +1 moves the content down, dx = +1 right (a quarter side: 2 px)
    assert transform_list("geom")[8] == (False, 0, 1, 0)
    assert transform_list("geom")[24] == (False, 1, 0, 0)
    np.testing.assert_array_equal(out[8 * 3 : 9 * 3, 2:], images[:, :6])
    np.testing.assert_array_equal(out[24 * 3 : 25 * 3, :, 2:], images[:, :, :6])


def test_log_likelihood_by_hand():
    logits = np.random.default_rng(1).normal(size=(4 * 2, 4)).astype(np.float32)
    got = np.asarray(transform_log_likelihood(jnp.asarray(logits), 4))
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = [np.mean([logp[t * 2 + b, t] for t in range(4)]) for b in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_score_of_a_known_network_by_hand():
    config = _config(width=2, depth=10)
    model = build("rotation", config.rotation, seed=3)
    network = split_model(model)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)  # 7: padded over 4 devices
    scores, accuracy = transform_scores(
        *network, images, "rotate", mesh=parallel.make_mesh(), inputs_per_call=16
    )
    by_hand, right = [], []
    for image in images:
        logp, hits = [], []
        for t in range(4):
            logits = apply_by_hand(network, np.rot90(image, t)[None] / 255.0)[0]
            logp.append(logits[t] - np.log(np.exp(logits).sum()))
            hits.append(np.argmax(logits) == t)
        by_hand.append(np.mean(logp))
        right.append(np.mean(hits))
    np.testing.assert_allclose(scores, by_hand, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(accuracy, right)


# ---- the stage ----------------------------------------------------------------------------------


def test_learns_the_rotations_of_digits(train_set, tmp_path):
    # 64 digits at 8 px; chance is 25%. Held-out digits of the same classes are told apart from
    # uniform noise, which has no orientation to recognise.
    config = _config(
        depth=10, width=8, batch_size=32, epochs=25, learning_rate=3e-3, augment="t_org"
    )
    test = load_test_set(config)
    summary = _train(config, tmp_path / "w", train_set, test)
    assert summary["test_transform_accuracy"] > 0.6, summary
    network = _load(tmp_path / "w", config)
    noise = np.random.default_rng(0).integers(0, 256, test.images.shape, dtype=np.uint8)
    mesh = parallel.make_mesh()
    s_in, _ = transform_scores(*network, test.images, "rotate", mesh=mesh)
    s_noise, _ = transform_scores(*network, noise, "rotate", mesh=mesh)
    assert np.mean(s_in[:, None] > s_noise[None, :]) > 0.8  # the AUROC against noise


def test_sigterm_saves_and_resume_equals_uninterrupted(train_set, tmp_path, monkeypatch):
    config = _config(epochs=2, checkpoint_every_steps=3)  # 8 steps, checkpoints at 3, 6, 8
    assert _train(config, tmp_path / "a", train_set)["total_steps"] == 8
    expected = _load(tmp_path / "a", config)[1]
    with (
        sigterm_after_step(monkeypatch, rotation_stage, 4),
        pytest.raises(Interrupted, match="step 5"),
    ):
        _train(config, tmp_path / "b", train_set)
    assert _train(config, tmp_path / "b", train_set)["finished"]
    resumed = _load(tmp_path / "b", config)[1]
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # finished: reused, not retrained; another identity: refused in one line, nothing moved
    assert _train(config, tmp_path / "b", train_set)["total_steps"] == 8
    with pytest.raises(SemsadError, match=r"holds a rotation trained with rotation.transforms="):
        run(_config(epochs=2, transforms="rotate_flip"), str(tmp_path / "b"), "rotation")
    assert (tmp_path / "b" / "rotation" / "8").is_dir()


def test_modes_refuse_in_one_line(smoke_trained, tmp_path):
    with pytest.raises(SemsadError, match=r"rotation detector is disabled in this config"):
        run(_config(enabled=False), str(tmp_path / "w"), "rotation")
    with pytest.raises(SemsadError, match=r"no trained rotation in .*--mode=rotation"):
        from helpers import copy_of

        workdir = copy_of(smoke_trained, tmp_path / "no_rotation")
        os.rename(os.path.join(workdir, "rotation"), os.path.join(workdir, "moved"))
        run(_config(), workdir, "eval")
    with pytest.raises(
        SemsadError, match=r"rotation.batch_size=6 is not divisible by the 4 devices"
    ):
        run(_config(batch_size=6), str(tmp_path / "b"), "rotation")


def test_eval_and_score_have_the_new_detectors(smoke_evaluated, smoke_detector, tmp_path):
    from helpers import read_json

    results = read_json(os.path.join(smoke_evaluated, "eval", "results.json"))
    assert set(results["detectors"]) == {
        "semsad", "knn", "mahalanobis", "pixels_knn", "rotation", "combined"
    }  # fmt: skip
    assert "rotation" in results["stages"] and "rotation" in results["threshold_95"]
    images = load_test_set(smoke.get_config()).images[:5]
    network = smoke_detector.rotation
    by_hand = transform_scores(*network, images, "rotate", mesh=parallel.make_mesh())[0]
    np.testing.assert_allclose(smoke_detector.score(images, detector="rotation"), by_hand)
    scores = smoke_detector.scores(images, detectors=("combined",))
    assert set(scores) == {"combined", "nn", "nn_similarity"}
    out = run(None, smoke_evaluated, "score", images="sklearn:digits/test?limit=4",
              detector="rotation", out=str(tmp_path / "s"))  # fmt: skip
    assert out["score"]["detector"] == "rotation"


def test_paper_configs_keep_rotation_off():
    from semsad_jax.configs import cifar10, cifar100, class_split, default, oneclass

    for module in (default, cifar10, cifar100):
        assert module.get_config().rotation.enabled is False
    for config in (smoke.get_config(), class_split.get_config(), oneclass.get_config("3")):
        assert config.rotation.enabled is True


# ---- the combined detector ----------------------------------------------------------------------


def test_percentiles_and_combined_by_hand():
    ref = np.arange(10, dtype=np.float64)  # 0..9, interquartile range 4.5
    logp = percentiles(ref, np.array([4.0, 4.5, -1.0, -10.0, 9.0, 20.0]))
    np.testing.assert_allclose(np.exp(logp[:2]), [0.45, 0.5])  # mid-ranks inside the range
    assert np.isclose(logp[2], np.log(0.05) - 1.0 / 4.5)  # below: continues past 0.5 / n
    assert logp[3] < logp[2] < np.log(0.05) and logp[5] > logp[4]
    combined = Combined({"a": ref, "b": 10 * ref})
    got = combined.scores({"a": np.array([8.0, 1.0]), "b": np.array([10.0, 80.0])})
    np.testing.assert_allclose(np.exp(got), [0.15, 0.15])  # the lower of the two percentiles
    assert parse_components("mahalanobis, pixels_knn") == ("mahalanobis", "pixels_knn")
    assert parse_components("semsad,knn") == ("semsad", "knn")
    for bad in ("semsad,combined", "knn", "knn,knn"):
        with pytest.raises(SemsadError, match=r"eval.combined"):
            parse_components(bad)


# ---- CSI's shifted instances in the encoder -----------------------------------------------------


def _encoder_config(**encoder):
    c = smoke.get_config()
    for k, v in encoder.items():
        c.encoder[k] = v
    return c


def test_shifted_instances_change_exactly_the_loss_and_the_negatives(train_set):
    """One step of the encoder with shifted instances: its loss is, by hand, InfoNCE over the four
    rotations of every image as distinct instances (so a rotated copy is a negative) plus
    shift_head_weight x the rotation cross-entropy of the auxiliary head, on the same views."""
    mesh = parallel.make_mesh()
    for shifted in (False, True):
        config = _encoder_config(shifted_instances=shifted, shift_head_weight=0.7, batch_size=8)
        e = config.encoder
        model = build("encoder", e, seed=0)
        assert hasattr(model, "aux_head") is shifted  # the plain encoder's parameters are unchanged
        graphdef, params, stats = split_model(model)
        tx = optax.sgd(0.0)
        state = parallel.replicate({"params": params, "batch_stats": stats,
                                    "opt_state": tx.init(params)}, mesh)  # fmt: skip
        setup = StepSetup(graphdef, tx, jax.tree.map(lambda x: x.sharding, state), e,
                          len(train_set), mesh, seed=0)  # fmt: skip
        step_fn = encoder_stage.make_train_step(setup)
        _, metrics = step_fn(state, parallel.replicate(train_set.images, mesh), np.int32(3))
        # the same step by hand: its rows and keys, then plain nnx and the loss functions
        root = jax.random.key(0)
        rows = steps.batch_indices(jax.random.fold_in(root, 1), 3, len(train_set), 8)
        x = jnp.asarray(train_set.images)[rows]
        labels = None
        if shifted:
            x = jnp.concatenate([jnp.rot90(x, r, axes=(1, 2)) for r in range(4)])
            labels = np.repeat(np.arange(4), 8)
        key = jax.random.fold_in(jax.random.fold_in(root, 2), 3)
        spec = get_spec(e.augment)
        views = jnp.concatenate(
            [augment_batch(jax.random.fold_in(key, i), x, spec) for i in (0, 1)]
        )
        from flax import nnx

        net = nnx.merge(graphdef, params, stats)
        net.train()
        pooled = net.features(views)
        z = net.project(pooled)
        n = len(x)
        expected = float(contrastive_loss(e.loss, z[:n], z[n:], float(e.temperature)))
        assert n == (32 if shifted else 8)  # instances: every rotation of the 8 images
        if shifted:
            logits = np.asarray(net.aux(pooled), np.float64)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            ce = -np.mean(logp[np.arange(2 * n), np.concatenate([labels, labels])])
            assert np.isclose(float(metrics["contrastive"]), expected, rtol=1e-4)
            assert np.isclose(float(metrics["shift_loss"]), ce, rtol=1e-4)
            expected += 0.7 * ce
        else:
            assert set(metrics) == {"loss", "finite"}
        assert np.isclose(float(metrics["loss"]), expected, rtol=1e-4), (shifted, metrics)


def test_combined_semsad_reference_by_hand(smoke_detector):
    """semsad as a component: its reference scores pair each reference bank image with its
    nearest OTHER bank image by h (by hand: numpy cosine, plain nnx), and the combined score is
    the lower percentile of semsad and knn."""
    import dataclasses

    from helpers import features_by_hand, pair_scores_by_hand

    from semsad_jax.workdir.layout import ConfigView

    config = ConfigView(smoke_detector.config.to_dict())
    config["eval"]["combined"], config["eval"]["combined_reference"] = "semsad,knn", 16
    det = dataclasses.replace(smoke_detector, config=config, _combined=None)
    assert det.names[-1] == "combined"
    bank = det.bank.images
    idx = np.sort(np.random.default_rng(int(config.seed)).choice(len(bank), 16, replace=False))
    h = features_by_hand(det.encoder, bank)
    sims = h[idx] @ h.T
    sims[np.arange(16), idx] = -np.inf  # never the image itself
    expected = pair_scores_by_hand(det.discriminator, bank[np.argmax(sims, axis=1)], bank[idx])
    np.testing.assert_allclose(det.combined.references["semsad"], expected, rtol=1e-4, atol=1e-5)
    images = load_test_set(smoke.get_config()).images[:6]
    got = det.scores(images, detectors=("combined",))["combined"]
    parts = det.scores(images, detectors=("semsad", "knn"))
    by_hand = np.minimum(
        percentiles(det.combined.references["semsad"], parts["semsad"]),
        percentiles(det.combined.references["knn"], parts["knn"]),
    )
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
