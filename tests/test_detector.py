"""semsad_jax.Detector: restore from a workdir alone, score / is_ood / nearest equal the eval outputs."""

import os
import subprocess
import sys

import helpers
import numpy as np
import pytest
from helpers import load_set, semsad_by_hand

from semsad_jax import data
from semsad_jax.data import sets, sources
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.detector import ConfigView, Detector, read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def restored(smoke_evaluated):
    """(detector restored with the training data unreachable, workdir, in-dist images, scores.npz)."""
    workdir = smoke_evaluated
    config = helpers.config()
    test_images = load_set(config, config.data.test).images

    def no_data(*args, **kwargs):
        raise AssertionError("Detector.restore must not load any data set")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources, "load_images", no_data)
        mp.setattr(sets, "load_images", no_data)
        det = Detector.restore(workdir)
    with np.load(os.path.join(workdir, "eval", "scores.npz")) as npz:
        scores = {k: npz[k] for k in npz.files}
    return det, workdir, test_images, scores


def test_restore_reads_config_json(restored):
    det, workdir, _, _ = restored
    assert isinstance(det.config, ConfigView)
    assert det.config.encoder.width == 4 and det.config.eval.get("missing", 7) == 7
    assert det.config.to_dict() == helpers.read_json(os.path.join(workdir, "config.json"))
    assert det.image_size == 8 and det.bn_mode == "running_stats"
    results = helpers.read_json(os.path.join(workdir, "eval", "results.json"))
    assert det.threshold == results["threshold_95"]["semsad"]


def test_score_nearest_is_ood_against_the_networks_by_hand(restored):
    """score / nearest / is_ood against the restored networks applied by hand (helpers)."""
    det, _, images, _ = restored
    expected, order, sims = semsad_by_hand(
        det.encoder, det.discriminator, det.bank.images, images, k=2
    )
    got = det.score(images)
    assert got.dtype == np.float32 and got.shape == (32,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    nn = det.nearest(images, k=2)
    assert nn.indices.shape == nn.similarities.shape == (32, 2)
    np.testing.assert_array_equal(nn.indices, order)
    np.testing.assert_allclose(nn.similarities, sims, atol=1e-5)
    flags = det.is_ood(images)
    np.testing.assert_array_equal(flags, got < det.threshold)
    # by hand too, but for a score within the tolerance of the threshold (the threshold is an
    # in-distribution score: the image it came from sits on it)
    clear = np.abs(expected - det.threshold) > 1e-4
    np.testing.assert_array_equal(flags[clear], (expected < det.threshold)[clear])
    assert clear.sum() >= 30
    # One image at a time gives the same scores (running statistics: no batch dependence).
    single = np.concatenate([det.score(images[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(single, expected[:3], rtol=1e-4, atol=1e-4)


def test_every_detector_of_the_eval_run_scores_from_the_restored_detector(restored):
    """det.score(x, detector=...) and det.is_ood(x, detector=...) give what --mode=eval stored."""
    det, workdir, images, stored = restored
    results = helpers.read_json(os.path.join(workdir, "eval", "results.json"))
    assert det.thresholds == results["threshold_95"]
    together = det.scores(images)
    for name in ("semsad", "knn", "mahalanobis", "pixels_knn"):
        expected = stored[f"{name}/in_distribution"]
        alone = det.score(images, detector=name)
        np.testing.assert_allclose(alone, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(together[name], expected, rtol=1e-4, atol=1e-4)
        flags = det.is_ood(images, detector=name)
        np.testing.assert_array_equal(flags, alone < results["threshold_95"][name])
    np.testing.assert_array_equal(together["nn"], stored["nn/in_distribution"])
    assert det.scores(images, detectors=("knn",)).keys() == {"knn", "nn", "nn_similarity"}
    with pytest.raises(SemsadError, match="unknown detector 'svm'; use one of semsad, knn"):
        det.score(images, detector="svm")


def test_wrong_image_size_is_a_clear_error(restored):
    det, _, images, _ = restored
    big = data.images_from_array(images, 16)
    with pytest.raises(SemsadError, match=r"uint8 \[N, 8, 8, 3\].*resize=True") as err:
        det.score(big)
    assert "\n" not in str(err.value)
    with pytest.raises(SemsadError, match="uint8"):
        det.score(images.astype(np.float32))
    with pytest.raises(SemsadError, match="no images"):
        det.score(images[:0])
    expected = det.score(data.images_from_array(big, 8))
    np.testing.assert_allclose(det.score(big, resize=True), expected, rtol=1e-6)


def test_is_ood_needs_eval_and_restore_needs_a_workdir(smoke_trained, tmp_path):
    det = Detector.restore(smoke_trained)
    assert det.threshold is None
    with pytest.raises(SemsadError, match="run --mode=eval first"):
        det.is_ood(det.bank.images[:2])
    with pytest.raises(SemsadError, match=r"config\.json is missing"):
        Detector.restore(str(tmp_path))
    assert read_config(smoke_trained).data.image_size == 8


def test_import_is_lazy():
    code = (
        "import sys, semsad_jax; assert 'jax' not in sys.modules, 'import pulled in jax'; "
        "from semsad_jax import Detector; assert Detector.__name__ == 'Detector'; "
        "import semsad_jax.evaluation.detector as d; assert semsad_jax.Detector is d.Detector"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_score_neighbours_averages_s_over_the_nearest_training_images(restored):
    det, _, images, _ = restored
    config = ConfigView(det.config.to_dict())
    config.eval["score_neighbours"] = 3
    three = Detector(config, det.encoder, det.discriminator, det.bank, mesh=det.mesh)
    x = images[:6]
    expected, nn, _ = semsad_by_hand(
        det.encoder, det.discriminator, det.bank.images, x, k=3, average=3
    )
    np.testing.assert_allclose(three.score(x), expected, rtol=1e-4, atol=1e-4)
    assert three.nearest(x).indices.shape == (6, 1)
    scores, _, top = three.score_with_neighbours(x, k=2)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
    assert top.indices.shape == (6, 2)
    np.testing.assert_array_equal(top.indices, nn[:, :2])
