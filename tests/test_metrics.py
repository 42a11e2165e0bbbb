"""OOD metrics against scikit-learn and known answers; the kNN monitor against a numpy reference."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from semsad_jax.errors import SemsadError
from semsad_jax.method.knn import pixel_knn_accuracy, weighted_knn_accuracy
from semsad_jax.method.metrics import (
    auroc_by_class,
    detection_accuracy,
    ood_metrics,
    roc_curve_points,
    threshold_at_tpr,
)


def _labelled(scores_in, scores_out):
    labels = np.r_[np.ones(len(scores_in)), np.zeros(len(scores_out))]
    return labels, np.r_[scores_in, scores_out]


def _brute_threshold(scores_in, tpr):
    candidates = np.unique(scores_in)
    keeps = [t for t in candidates if np.mean(scores_in >= t) >= tpr]
    return max(keeps)


# ---- OOD metrics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n_in", "n_out"), [(0, 200, 150), (1, 31, 400), (2, 7, 3)])
def test_matches_sklearn_with_ties(seed, n_in, n_out):
    rng = np.random.default_rng(seed)
    scores_in = rng.integers(0, 12, n_in).astype(float)  # heavy ties within and across sets
    scores_out = rng.integers(-3, 8, n_out).astype(float)
    labels, scores = _labelled(scores_in, scores_out)
    result = ood_metrics(scores_in, scores_out)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["aupr_in"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert result["aupr_out"] == pytest.approx(
        average_precision_score(1 - labels, -scores), abs=1e-12
    )
    threshold = _brute_threshold(scores_in, 0.95)
    assert result["threshold"] == threshold
    assert result["fpr95"] == pytest.approx(np.mean(scores_out >= threshold))
    assert result["detection_at_95"] == pytest.approx(1.0 - result["fpr95"])
    assert (result["num_in"], result["num_out"]) == (n_in, n_out)
    fpr, tpr = roc_curve_points(scores_in, scores_out)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # trapezoid rule
    assert area == pytest.approx(result["auroc"])


def test_continuous_scores_match_sklearn():
    rng = np.random.default_rng(3)
    scores_in, scores_out = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.5, 300)
    labels, scores = _labelled(scores_in, scores_out)
    result = ood_metrics(scores_in, scores_out)
    assert 0.6 < result["auroc"] < 0.95
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert result["aupr_in"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)


def test_perfect_separation():
    result = ood_metrics(np.linspace(5, 6, 40), np.linspace(-3, 4, 25))
    assert result["auroc"] == 1.0 and result["aupr_in"] == 1.0 and result["aupr_out"] == 1.0
    assert result["fpr95"] == 0.0 and result["detection_at_95"] == 1.0
    reversed_ = ood_metrics(np.linspace(-3, 4, 25), np.linspace(5, 6, 40))
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0


def test_identical_distributions():
    scores = np.random.default_rng(4).normal(size=100)
    result = ood_metrics(scores, scores)
    assert result["auroc"] == pytest.approx(0.5)
    assert result["fpr95"] == pytest.approx(0.95)
    constant = ood_metrics(np.zeros(10), np.zeros(30))
    assert constant["auroc"] == 0.5 and constant["fpr95"] == 1.0
    assert constant["aupr_in"] == pytest.approx(0.25)  # precision of the single threshold


def test_hand_computed_example():
    scores_in = np.arange(1.0, 21.0)  # 20 in-distribution scores 1..20
    scores_out = np.array([0.0, 1.5, 2.0, 2.5, 30.0])
    result = ood_metrics(scores_in, scores_out, tpr=0.95)
    assert result["threshold"] == 2.0  # keeps 19 / 20 = 0.95; 3.0 would keep only 0.9
    assert result["fpr95"] == pytest.approx(3 / 5)  # 2.0, 2.5 and 30.0 are kept
    assert result["detection_at_95"] == pytest.approx(2 / 5)
    # Pairs (in > out) per OOD score: 20, 19, 18 + a tie, 18, 0 -> 75.5 of 100.
    assert result["auroc"] == pytest.approx(0.755)
    assert ood_metrics(scores_in, scores_out, tpr=1.0)["threshold"] == 1.0
    assert ood_metrics(scores_in, scores_out, tpr=0.5)["threshold"] == 11.0


def test_auroc_by_class_known_answer():
    scores_in = np.array([1.0, 2.0, 3.0, 4.0])
    scores_out = np.array([0.0, 0.5, 2.5, 5.0, 5.0])
    labels = np.array([2, 2, 0, 0, 0])
    # class 0: 2.5 beats 2 of 4 in-scores, 5.0 beats all -> (2 + 0 + 0) / 12; class 2: all below
    got = auroc_by_class(scores_in, scores_out, labels, ["ship", "x", "truck"])
    assert list(got) == ["ship", "truck"]
    assert got["ship"] == pytest.approx(2 / 12) and got["truck"] == 1.0
    assert list(auroc_by_class(scores_in, scores_out, labels)) == ["0", "2"]
    with pytest.raises(SemsadError, match="OOD labels"):
        auroc_by_class(scores_in, scores_out, labels[:3])


def test_detection_accuracy_known_answers():
    scores_in = np.arange(1.0, 21.0)
    scores_out = np.array([0.0, 1.5, 2.0, 2.5, 30.0])
    # Best threshold 3.0: keeps 18 / 20 in-distribution, flags 4 / 5 OOD -> (0.9 + 0.8) / 2.
    assert detection_accuracy(scores_in, scores_out) == pytest.approx(0.85)
    assert ood_metrics(scores_in, scores_out)["detection_accuracy"] == pytest.approx(0.85)
    assert detection_accuracy([2.0, 3.0], [0.0, 1.0]) == 1.0  # separable
    assert detection_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.5  # indistinguishable
    assert detection_accuracy([0.0], [1.0]) == 0.5  # reversed: the all-OOD threshold is no better


def test_detection_accuracy_matches_brute_force():
    rng = np.random.default_rng(3)
    scores_in, scores_out = rng.integers(0, 12, 40).astype(float), rng.integers(0, 12, 30) - 2.0
    best = max(
        (np.mean(scores_in >= t) + np.mean(scores_out < t)) / 2
        for t in [*np.unique(np.r_[scores_in, scores_out]), np.inf]
    )
    assert detection_accuracy(scores_in, scores_out) == pytest.approx(best)


@pytest.mark.parametrize("tpr", [0.07, 0.3, 0.5, 0.95, 0.99, 1.0])
def test_threshold_at_tpr_is_the_largest_valid_threshold(tpr):
    scores = np.random.default_rng(5).integers(0, 30, 100).astype(float)
    assert threshold_at_tpr(scores, tpr) == _brute_threshold(scores, tpr)


def test_infinite_scores_tie_like_large_finite_ones():
    scores_in, scores_out = np.array([np.inf, np.inf, 1.0, 0.0]), np.array([np.inf, 0.0, -np.inf])
    finite_in = np.where(np.isinf(scores_in), 1e9, scores_in)
    finite_out = np.where(np.isinf(scores_out), np.sign(scores_out) * 1e9, scores_out)
    labels, finite = _labelled(finite_in, finite_out)  # scikit-learn refuses infinite scores
    result = ood_metrics(scores_in, scores_out)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, finite))  # 8.5 / 12
    assert result["aupr_in"] == pytest.approx(average_precision_score(labels, finite))
    assert result["aupr_out"] == pytest.approx(average_precision_score(1 - labels, -finite))
    assert result["threshold"] == 0.0 and result["fpr95"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("scores_in", "scores_out", "tpr", "message"),
    [
        ([], [1.0], 0.95, "scores_in is empty"),
        ([1.0], [], 0.95, "scores_out is empty"),
        ([1.0, np.nan], [1.0], 0.95, "NaN"),
        ([1.0], [np.nan], 0.95, "NaN"),
        ([1.0], [1.0], 0.0, "tpr"),
        ([1.0], [1.0], 1.5, "tpr"),
    ],
)
def test_user_errors(scores_in, scores_out, tpr, message):
    with pytest.raises(SemsadError, match=message):
        ood_metrics(scores_in, scores_out, tpr=tpr)


# ---- kNN monitor --------------------------------------------------------------------------------


def _numpy_weighted_knn(train, train_labels, test, test_labels, k, temperature, num_classes):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    sims = test @ train.T
    k = min(k, len(train))
    correct = 0
    for row, label in enumerate(test_labels):
        nearest = np.argsort(-sims[row], kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_labels[j]] += np.exp(sims[row, j] / temperature)
        correct += int(np.argmax(votes) == label)
    return correct / len(test_labels)


def test_clustered_points_known_accuracy():
    rng = np.random.default_rng(6)
    centres = 5.0 * np.eye(3, 6)
    train = np.repeat(centres, 20, axis=0) + 0.3 * rng.normal(size=(60, 6))
    train_labels = np.repeat(np.arange(3), 20)
    test = np.repeat(centres, 4, axis=0) + 0.3 * rng.normal(size=(12, 6))
    test_labels = np.repeat(np.arange(3), 4)
    kwargs = {"k": 10, "temperature": 0.1, "bank_chunk": 16}
    assert weighted_knn_accuracy(train, train_labels, test, test_labels, **kwargs) == 1.0
    test_labels[[0, 5, 11]] = [2, 0, 1]  # three wrong labels -> exactly 9 / 12
    assert weighted_knn_accuracy(train, train_labels, test, test_labels, **kwargs) == 0.75


@pytest.mark.parametrize(("k", "temperature"), [(5, 0.1), (1, 0.5), (500, 0.07)])
def test_matches_numpy_weighted_knn(k, temperature):
    rng = np.random.default_rng(7)
    train, test = rng.normal(size=(80, 5)), rng.normal(size=(40, 5))
    train_labels = (train[:, 0] > 0).astype(int) + 2 * (rng.random(80) < 0.3)
    test_labels = (test[:, 0] > 0).astype(int) + 2 * (rng.random(40) < 0.3)
    expected = _numpy_weighted_knn(train, train_labels, test, test_labels, k, temperature, 4)
    got = weighted_knn_accuracy(
        train, train_labels, test, test_labels, k=k, temperature=temperature, bank_chunk=32
    )
    assert got == pytest.approx(expected)
    assert 0.3 < got < 1.0


def test_temperature_changes_the_vote():
    # One very close neighbour of class 0, two moderately close ones of class 1.
    train = np.array([[1.0, 0.05], [1.0, 0.6], [1.0, -0.6]])
    train_labels = np.array([0, 1, 1])
    test, test_labels = np.array([[1.0, 0.0]]), np.array([0])
    sharp = weighted_knn_accuracy(train, train_labels, test, test_labels, k=3, temperature=0.01)
    flat = weighted_knn_accuracy(train, train_labels, test, test_labels, k=3, temperature=10.0)
    assert (sharp, flat) == (1.0, 0.0)


def test_pixel_knn_accuracy():
    rng = np.random.default_rng(8)
    stripes = np.zeros((2, 8, 8, 3))
    stripes[0, ::2] = 1.0  # class 0: horizontal stripes
    stripes[1, :, ::2] = 1.0  # class 1: vertical stripes

    def images(labels):
        noisy = 160 * stripes[labels] + rng.integers(0, 90, (len(labels), 8, 8, 3))
        return noisy.astype(np.uint8)

    train_labels, test_labels = np.arange(30) % 2, np.arange(10) % 2
    train, test = images(train_labels), images(test_labels)
    assert pixel_knn_accuracy(train, train_labels, test, test_labels, k=5) == 1.0
    flat_train = train.reshape(30, -1) / 255.0
    flat_test = test.reshape(10, -1) / 255.0
    mean = flat_train.mean(axis=0)
    shuffled = rng.permutation(train_labels)
    expected = _numpy_weighted_knn(
        flat_train - mean, shuffled, flat_test - mean, test_labels, 5, 0.1, 2
    )
    got = pixel_knn_accuracy(train, shuffled, test, test_labels, k=5)
    assert got == pytest.approx(expected)


def test_monitor_user_errors():
    features = np.ones((4, 3))
    with pytest.raises(SemsadError, match="train_labels"):
        weighted_knn_accuracy(features, [0, 1], features, [0, 1, 0, 1])
    with pytest.raises(SemsadError, match="num_classes"):
        weighted_knn_accuracy(features, [0, 1, 2, 3], features, [0, 1, 0, 1], num_classes=2)
    with pytest.raises(SemsadError, match="same shape"):
        pixel_knn_accuracy(
            np.zeros((4, 2, 2, 3), np.uint8), [0] * 4, np.zeros((2, 3, 3, 3)), [0, 0]
        )
