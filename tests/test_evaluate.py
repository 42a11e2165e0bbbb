"""--mode=eval / --mode=score on the real smoke run, the baselines against numpy references."""

import collections
import csv
import json
import os

import helpers
import numpy as np
import pytest
from helpers import load_set, semsad_by_hand
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn.metrics import average_precision_score, roc_auc_score

from semsad_jax.data import sets
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation import plots
from semsad_jax.evaluation.baselines import (
    PINV_RTOL,
    fit_mahalanobis,
    knn_scores,
    mahalanobis_scores,
)
from semsad_jax.evaluation.detector import Detector
from semsad_jax.evaluation.evaluate import (
    DETECTORS,
    evaluate_detector,
    ood_specs,
    parse_ood,
)
from semsad_jax.method.features import map_batched
from semsad_jax.models import make_discriminator, split_model
from semsad_jax.run import run
from semsad_jax.workdir import layout

METRIC_KEYS = {
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr95",
    "detection_at_95",
    "detection_accuracy",
    "num_ood",
}


@pytest.fixture(scope="module")
def evaluated(smoke_evaluated):
    workdir = smoke_evaluated
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        results = json.load(f)
    with np.load(os.path.join(workdir, "eval", "scores.npz")) as npz:
        scores = {k: npz[k] for k in npz.files}
    return workdir, results, scores


def test_results_json_shape_and_ranges(evaluated):
    workdir, results, scores = evaluated
    config = helpers.config()
    required = {"in_distribution", "num_in", "bn_mode", "detectors", "threshold_95"}
    assert required | {"config", "versions"} <= set(results)
    assert results["in_distribution"] == config.data.test
    assert results["num_in"] == 32 == len(scores["semsad/in_distribution"])
    assert results["bn_mode"] == "running_stats"
    assert results["positive_class"].startswith("in-distribution")
    assert set(results["detectors"]) == set(DETECTORS) == set(results["threshold_95"])
    for detector in DETECTORS:
        assert set(results["detectors"][detector]) == {"digits_7_9"}
        m = results["detectors"][detector]["digits_7_9"]
        assert set(m) == METRIC_KEYS
        assert m["num_ood"] == 24  # the values: test_metrics_against_sklearn_on_saved_scores
    assert results["config"]["discriminator"]["norm"] == "batch"
    assert {"jax", "flax", "numpy", "python"} <= set(results["versions"])
    text = helpers.read_text(os.path.join(workdir, "eval", "results.txt"))
    assert "bn_mode: running_stats" in text and "in-distribution is the positive class" in text
    assert all(f"{d}  " in text for d in DETECTORS) and "DetAcc" in text


def _reference_metrics(s_in, s_out, tpr=0.95):
    """The results.json metrics by scikit-learn and brute force (none of method.metrics)."""
    labels, both = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out]
    threshold = max(t for t in np.unique(s_in) if np.mean(s_in >= t) >= tpr)
    candidates = [*np.unique(both), np.inf]
    return threshold, {
        "auroc": roc_auc_score(labels, both),
        "aupr_in": average_precision_score(labels, both),
        "aupr_out": average_precision_score(1 - labels, -both),
        "fpr95": np.mean(s_out >= threshold),
        "detection_at_95": np.mean(s_out < threshold),
        "detection_accuracy": max(
            (np.mean(s_in >= t) + np.mean(s_out < t)) / 2 for t in candidates
        ),
    }


def test_metrics_against_sklearn_on_saved_scores(evaluated):
    _, results, scores = evaluated
    assert scores["nn/in_distribution"].dtype == np.int32
    for detector in DETECTORS:
        s_in, s_out = scores[f"{detector}/in_distribution"], scores[f"{detector}/digits_7_9"]
        threshold, expected = _reference_metrics(s_in, s_out)
        assert results["threshold_95"][detector] == pytest.approx(threshold)
        got = results["detectors"][detector]["digits_7_9"]
        for key in METRIC_KEYS - {"num_ood"}:
            assert got[key] == pytest.approx(expected[key]), (detector, key)


def test_auroc_by_class_against_sklearn_on_saved_scores(evaluated):
    """Each OOD class's AUROC alone, recomputed from the saved scores and the set's labels."""
    _, results, scores = evaluated
    config = helpers.config()
    ood = load_set(config, config.eval.ood.digits_7_9)
    assert len(np.unique(ood.labels)) == 3  # digits 7, 8 and 9
    for detector in DETECTORS:
        s_in, s_out = scores[f"{detector}/in_distribution"], scores[f"{detector}/digits_7_9"]
        got = results["auroc_by_class"][detector]["digits_7_9"]
        assert list(got) == [ood.class_names[c] for c in np.unique(ood.labels)]
        for c in np.unique(ood.labels):
            part = s_out[ood.labels == c]
            both, labels = np.r_[s_in, part], np.r_[np.ones(len(s_in)), np.zeros(len(part))]
            assert got[ood.class_names[c]] == pytest.approx(roc_auc_score(labels, both))


def test_saved_semsad_scores_equal_the_networks_applied_by_hand(evaluated, smoke_detector):
    """scores.npz against the restored encoder and discriminator applied by hand: numpy cosine top-1
    among the recomputed bank features, then s(nearest training image, image) as a plain nnx call."""
    _, _, scores = evaluated
    det, config = smoke_detector, helpers.config()
    for name, spec in (("in_distribution", config.data.test), *config.eval.ood.items()):
        images = load_set(config, spec).images
        expected, nn, _ = semsad_by_hand(det.encoder, det.discriminator, det.bank.images, images)
        np.testing.assert_array_equal(scores[f"nn/{name}"], nn[:, 0])
        np.testing.assert_allclose(scores[f"semsad/{name}"], expected, rtol=1e-4, atol=1e-4)


def test_plots_are_pngs(evaluated):
    workdir, _, _ = evaluated
    for name in ("hist_semsad.png", "roc.png"):
        with open(os.path.join(workdir, "eval", name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_batch_size_independent_and_extra_ood(evaluated, smoke_trained, tmp_path):
    _, _, scores = evaluated
    copy = helpers.copy_of(smoke_trained, tmp_path / "run")
    extra = "five=sklearn:digits/test?classes=5&limit=12"
    run(helpers.config(batch_size=8), copy, "eval", ood=[extra])
    with np.load(os.path.join(copy, "eval", "scores.npz")) as other:
        for key in ("semsad/in_distribution", "semsad/digits_7_9", "nn/digits_7_9"):
            np.testing.assert_allclose(other[key], scores[key], rtol=1e-5, atol=1e-6)
        assert other["semsad/five"].shape == (12,)
    results = helpers.read_json(os.path.join(copy, "eval", "results.json"))
    assert results["ood"]["five"] == "sklearn:digits/test?classes=5&limit=12"
    assert results["detectors"]["semsad"]["five"]["num_ood"] == 12
    assert not os.path.exists(os.path.join(copy, "eval", "hist_semsad.png"))  # smoke: plots off


def test_mode_all_reads_each_file_and_decodes_each_set_once(smoke_trained, tmp_path, monkeypatch):
    """--mode=all on a trained workdir: each JSON file read once, each data spec decoded once."""
    copy = helpers.copy_of(smoke_trained, tmp_path / "run")
    reads, decodes = collections.Counter(), collections.Counter()
    real_read, real_load = layout.read_json, sets.load_images

    def counting_read(path):
        reads[os.path.relpath(path, copy)] += 1
        return real_read(path)

    def counting_load(spec, *args, **kwargs):
        decodes[spec] += 1
        return real_load(spec, *args, **kwargs)

    monkeypatch.setattr(layout, "read_json", counting_read)
    monkeypatch.setattr(sets, "load_images", counting_load)
    config = helpers.config()
    run(config, copy, "all")
    assert reads["encoder/stage.json"] == reads["discriminator/stage.json"] == 1, reads
    assert max(reads.values()) == 1, reads
    assert decodes[config.data.train] == decodes[config.data.test] == 1, decodes
    assert max(decodes.values()) == 1, decodes


def test_transductive_mode_is_labelled_and_batch_dependent(smoke_detector, tmp_path, monkeypatch):
    """An (untrained) batch_transductive discriminator: labels everywhere, authors' batching."""
    import jax
    from flax import nnx

    assert jax.device_count() == 4  # groups of 10 do not split over 4 devices: one-device path
    config = helpers.config(batch_size=10, plots=True)
    config.discriminator.norm = "batch_transductive"
    base = smoke_detector
    disc = split_model(make_discriminator(config.discriminator, rngs=nnx.Rngs(1)))
    det = Detector(config, base.encoder, disc, base.bank, mesh=base.mesh)
    titles = []
    for name in ("score_histograms", "roc_curves"):
        original = getattr(plots, name)

        def capture(*args, _original=original, **kwargs):
            titles.append(kwargs["title"])
            return _original(*args, **kwargs)

        monkeypatch.setattr(plots, name, capture)
    out = str(tmp_path / "eval")
    results = evaluate_detector(det, config.data.test, dict(config.eval.ood), out)
    label = "transductive (authors' evaluation)"
    assert results["bn_mode"] == label
    assert f"bn_mode: {label}" in helpers.read_text(os.path.join(out, "results.txt"))
    assert helpers.read_json(os.path.join(out, "results.json"))["bn_mode"] == label
    assert len(titles) == 2 and all(label in t for t in titles)
    assert os.path.exists(os.path.join(out, "hist_semsad.png"))

    # Reference: each consecutive group of eval.batch_size pairs is one batch with its own stats.
    images = load_set(config, config.eval.ood.digits_7_9).images  # 24 = 10 + 10 + 4
    refs = det.bank.images[det.nearest(images).indices[:, 0]]
    model = nnx.merge(*disc)
    model.eval()
    pairs = np.concatenate([refs, images], axis=-1).astype(np.float32) / 255.0
    expected = np.concatenate([np.asarray(model(pairs[i : i + 10]))[:, 0] for i in (0, 10, 20)])
    with np.load(os.path.join(out, "scores.npz")) as npz:
        np.testing.assert_allclose(npz["semsad/digits_7_9"], expected, rtol=1e-4, atol=1e-5)
    whole = np.asarray(model(pairs))[:, 0]  # one batch of 24: different statistics, other scores
    assert np.abs(whole - expected).max() > 1e-3


def test_parse_ood():
    assert parse_ood(["svhn=tfds:svhn_cropped/test", " a.b-c = sklearn:digits?classes=1,2 "]) == {
        "svhn": "tfds:svhn_cropped/test",
        "a.b-c": "sklearn:digits?classes=1,2",
    }
    for bad in ("svhn", "=tfds:x/test", "svhn=", "my set=tfds:x/test", "x=nope:abc"):
        with pytest.raises(SemsadError):
            parse_ood([bad])
    with pytest.raises(SemsadError, match="reserved"):
        parse_ood(["in_distribution=sklearn:digits"])
    with pytest.raises(SemsadError, match="twice"):
        parse_ood(["a=sklearn:digits", "a=sklearn:digits/test"])
    merged = ood_specs(helpers.config(), ["digits_7_9=sklearn:digits", "z=sklearn:digits"])
    assert merged == {"digits_7_9": "sklearn:digits", "z": "sklearn:digits"}


def test_knn_against_numpy():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = np.sort(unit(queries) @ unit(bank).T, axis=1)[:, ::-1]
    for k in (1, 3):
        np.testing.assert_allclose(knn_scores(queries, bank, k), sims[:, k - 1], atol=1e-5)


def test_mahalanobis_against_scipy():
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(30, 5)) * np.array([1, 2, 3, 1, 1]) + 4
    queries = rng.normal(size=(7, 5)) + 4
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    b, q = unit(bank), unit(queries)
    inverse = np.linalg.pinv(np.cov(b.T, bias=True))
    expected = [-scipy_mahalanobis(x, b.mean(0), inverse) for x in q]
    np.testing.assert_allclose(
        mahalanobis_scores(fit_mahalanobis(bank), queries), expected, rtol=1e-4
    )
    # Full shrinkage: covariance = tr(S)/D * I, so the distance is Euclidean / sqrt(tr(S)/D).
    scale = np.trace(np.cov(b.T, bias=True)) / 5
    euclid = np.linalg.norm(q - b.mean(0), axis=1) / np.sqrt(scale)
    shrunk = fit_mahalanobis(bank, shrinkage=1.0)
    np.testing.assert_allclose(mahalanobis_scores(shrunk, queries), -euclid, rtol=1e-4)
    # Two well separated clusters: each query is measured against its own cluster.
    two = np.concatenate([bank, -bank])
    model = fit_mahalanobis(two, clusters=2)
    assert model.means.shape == (2, 5)
    np.testing.assert_allclose(mahalanobis_scores(model, -queries), expected, rtol=1e-4)
    with pytest.raises(SemsadError):
        fit_mahalanobis(bank, clusters=31)


def test_eval_baselines_match_references(evaluated, smoke_detector):
    _, results, scores = evaluated
    det = smoke_detector
    config = helpers.config()
    images = load_set(config, config.data.test).images
    assert results["baseline_features"] == "penultimate" and results["label_free"] is True
    # knn / mahalanobis: the encoder's pooled backbone features (SSD and KNN use them), 8 x width
    feats = det.features(images, output="penultimate")
    bank = det.features(det.bank.images, output="penultimate")
    assert feats.shape[1] == 8 * config.encoder.width != det.bank.features.shape[1]
    unit_bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    np.testing.assert_allclose(
        scores["knn/in_distribution"], np.max(feats @ unit_bank.T, axis=1), atol=1e-5
    )
    inverse = np.linalg.pinv(np.cov(unit_bank.T, bias=True), rcond=PINV_RTOL)
    unit_feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    expected = [-scipy_mahalanobis(x, unit_bank.mean(0), inverse) for x in unit_feats]
    np.testing.assert_allclose(scores["mahalanobis/in_distribution"], expected, rtol=1e-3)
    # pixels_knn: cosine of raw [0, 1] pixels to the nearest training image (not centred)
    pix = images.reshape(len(images), -1) / 255.0
    train = det.bank.images.reshape(len(det.bank.images), -1) / 255.0
    cos = (pix / np.linalg.norm(pix, axis=1, keepdims=True)) @ (
        train / np.linalg.norm(train, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(scores["pixels_knn/in_distribution"], cos.max(axis=1), atol=1e-5)


def test_several_feature_outputs_from_one_pass(smoke_detector):
    det = smoke_detector
    # map_batched with a tuple-valued fn: padded batches of 4, padding rows dropped from each leaf
    rows = np.arange(14.0, dtype=np.float32).reshape(7, 2)
    doubled, sums = map_batched(lambda x: (2 * x, x.sum(1)), (rows,), mesh=det.mesh, batch_size=4)
    np.testing.assert_array_equal(doubled, 2 * rows)
    np.testing.assert_array_equal(sums, rows.sum(1))
    # (h, backbone) in one call equal the two single calls; h is what the bank holds
    images = det.bank.images[:7]
    head, pooled = det.features(images, output=("head", "penultimate"))
    np.testing.assert_allclose(head, det.features(images), atol=1e-6)
    np.testing.assert_allclose(head, det.bank.features[:7], atol=1e-5)
    np.testing.assert_allclose(pooled, det.features(images, output="penultimate"), atol=1e-6)
    assert pooled.shape[1] != head.shape[1] and head.dtype == pooled.dtype == np.float32
    # the precomputed h gives the same SemSAD scores as letting the detector compute it
    np.testing.assert_allclose(
        det.score_with_neighbours(images, features=head)[0], det.score(images), atol=1e-6
    )
    with pytest.raises(SemsadError, match="logits"):
        det.features(images, output=("head", "logits"))


def test_floors_on_head_features_and_centred_pixels(smoke_detector):
    det = smoke_detector
    config = helpers.config(baseline_features="head", pixels_centre=True)
    det = Detector(config, det.encoder, det.discriminator, det.bank, mesh=det.mesh)
    images = load_set(config, config.data.test).images[:8]
    floors = det.floors
    assert floors.features == "head" and floors.pixels.mean is not None
    got = det.scores(images)
    head = det.features(images)
    np.testing.assert_allclose(got["knn"], np.max(head @ det.bank.features.T, axis=1), atol=1e-5)
    mean = det.bank.images.reshape(len(det.bank.images), -1).mean(0) / 255.0
    pix = images.reshape(8, -1) / 255.0 - mean
    train = det.bank.images.reshape(len(det.bank.images), -1) / 255.0 - mean
    cos = (pix / np.linalg.norm(pix, axis=1, keepdims=True)) @ (
        train / np.linalg.norm(train, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(got["pixels_knn"], cos.max(axis=1), atol=1e-5)
    bad = helpers.config(baseline_features="logits")
    with pytest.raises(SemsadError, match="baseline_features"):
        Detector(bad, det.encoder, det.discriminator, det.bank, mesh=det.mesh).scores(images)


def test_score_csv(evaluated, smoke_detector, tmp_path):
    workdir = helpers.copy_of(evaluated[0], tmp_path / "run")  # --mode=score writes score/
    results, config = evaluated[1], helpers.config()
    summary = run(config, workdir, "score", images=config.data.test)["score"]
    with open(summary["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert summary["csv"] == os.path.join(workdir, "score", "scores.csv")
    test_set, det = load_set(config, config.data.test), smoke_detector
    assert [r["id"] for r in rows] == test_set.ids
    assert {r["source"] for r in rows} == {config.data.test}
    expected, nn, sims = semsad_by_hand(
        det.encoder, det.discriminator, det.bank.images, test_set.images
    )
    got = np.array([float(r["score"]) for r in rows])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert [int(r["nearest_index"]) for r in rows] == nn[:, 0].tolist()
    similarity = np.array([float(r["nearest_similarity"]) for r in rows])
    np.testing.assert_allclose(similarity, sims[:, 0], atol=1e-5)
    # the 95% threshold keeps 31 of the 32 images: the one flagged is the lowest scored by hand
    flagged = ["1" if i == np.argmin(expected) else "0" for i in range(32)]
    assert [r["is_ood"] for r in rows] == flagged
    assert summary["num_ood"] == 1 and summary["threshold"] == results["threshold_95"]["semsad"]


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_wrong_order(smoke_trained, tmp_path):
    config = helpers.config()
    with pytest.raises(SemsadError) as err:
        run(config, str(tmp_path / "empty"), "eval")
    assert "run --mode=encoder" in _one_line(err)
    encoder_only = helpers.copy_of(smoke_trained, tmp_path / "encoder_only")
    os.remove(os.path.join(encoder_only, "discriminator", "stage.json"))
    with pytest.raises(SemsadError) as err:
        run(config, encoder_only, "eval")
    assert "no trained discriminator" in _one_line(err)
    with pytest.raises(SemsadError) as err:
        run(config, smoke_trained, "score", images=config.data.test)
    assert "run --mode=eval first" in _one_line(err)
