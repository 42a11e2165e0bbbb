"""Out-of-distribution detection metrics (numpy only).

Convention everywhere in this module: IN-DISTRIBUTION is the POSITIVE class and a HIGHER score means
MORE in-distribution (SemSAD's discriminator score s(neighbour, x)). A detector keeps an image when
its score is >= a threshold and flags it as out-of-distribution when the score is below it.

Ties are handled exactly like scikit-learn (roc_auc_score, average_precision_score, roc_curve):
tied scores form a single threshold, and AUROC counts a tied (in, out) pair as one half.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from semsad_jax.errors import SemsadError

__all__ = [
    "auroc_by_class",
    "detection_accuracy",
    "ood_metrics",
    "roc_curve_points",
    "threshold_at_tpr",
]


def _scores(values: Any, name: str) -> np.ndarray:
    """Flatten to float64 [n]; empty arrays and NaN scores are user errors."""
    scores = np.asarray(values, dtype=np.float64).ravel()
    if scores.size == 0:
        raise SemsadError(f"{name} is empty; score at least one image of each set.")
    if np.isnan(scores).any():
        raise SemsadError(
            f"{name} contains {int(np.isnan(scores).sum())} NaN scores; check the model and inputs."
        )
    return scores


def _check_tpr(tpr: float) -> float:
    if not 0.0 < tpr <= 1.0:
        raise SemsadError(f"tpr={tpr} is outside (0, 1]; use e.g. 0.95.")
    return float(tpr)


def _curve(scores_pos: np.ndarray, scores_neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct score, highest score first.

    Both returned arrays are float64 [num_distinct_scores]; entry j counts the scores >= the j-th
    largest distinct score.
    """
    scores = np.concatenate([scores_pos, scores_neg])
    is_pos = np.concatenate([np.ones(scores_pos.size), np.zeros(scores_neg.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_pos = scores[order], is_pos[order]
    # The last position of every run of equal scores closes one threshold.
    last_of_run = np.r_[np.flatnonzero(scores[1:] != scores[:-1]), scores.size - 1]
    true_pos = np.cumsum(is_pos)[last_of_run]
    false_pos = (last_of_run + 1) - true_pos
    return true_pos, false_pos


def _average_precision(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """Average precision, sum_n (R_n - R_{n-1}) P_n over distinct thresholds (sklearn's definition)."""
    true_pos, false_pos = _curve(scores_pos, scores_neg)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / scores_pos.size
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """P(score_in > score_out) + 0.5 P(tie), from average ranks (Mann-Whitney U)."""
    scores = np.concatenate([scores_in, scores_out])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each group of equal scores.
    rank_of_group = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum_in = rank_of_group[inverse[: scores_in.size]].sum()
    n_in, n_out = scores_in.size, scores_out.size
    u_statistic = rank_sum_in - n_in * (n_in + 1) / 2.0
    return float(np.clip(u_statistic / (n_in * n_out), 0.0, 1.0))


def threshold_at_tpr(scores_in: Any, tpr: float = 0.95) -> float:
    """The score threshold that keeps ``tpr`` of the in-distribution images.

    In-distribution is positive, higher score = more in-distribution. Returns the largest t with
    mean(scores_in >= t) >= tpr, which is always one of the in-distribution scores.
    ``scores_in``: any shape, flattened; ``tpr`` in (0, 1].
    """
    scores = _scores(scores_in, "scores_in")
    tpr = _check_tpr(tpr)
    n = scores.size
    # Smallest count c with c / n >= tpr, using the same float arithmetic as mean(...) >= tpr.
    count = min(n, max(1, int(np.ceil(tpr * n))))
    while count > 1 and (count - 1) / n >= tpr:
        count -= 1
    while count < n and count / n < tpr:
        count += 1
    return float(np.sort(scores)[::-1][count - 1])


def roc_curve_points(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve with in-distribution positive (higher score = more in-distribution), for plotting.

    Returns (fpr, tpr), float64 [num_distinct_scores + 1] each, starting at (0, 0) and ending at
    (1, 1), one point per distinct threshold from the highest score down; the same points as
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` with in-distribution labelled 1.
    """
    positives = _scores(scores_in, "scores_in")
    negatives = _scores(scores_out, "scores_out")
    true_pos, false_pos = _curve(positives, negatives)
    fpr = np.r_[0.0, false_pos / negatives.size]
    tpr = np.r_[0.0, true_pos / positives.size]
    return fpr, tpr


def detection_accuracy(scores_in: Any, scores_out: Any) -> float:
    """max over thresholds t of (TPR(t) + TNR(t)) / 2; in-distribution positive, kept at >= t.

    Every distinct score is a candidate threshold, plus one above all scores (TPR 0, TNR 1), so
    the result lies in [0.5, 1].
    """
    positives = _scores(scores_in, "scores_in")
    negatives = _scores(scores_out, "scores_out")
    true_pos, false_pos = _curve(positives, negatives)
    tpr = np.r_[0.0, true_pos / positives.size]
    tnr = 1.0 - np.r_[0.0, false_pos / negatives.size]
    return float(np.max((tpr + tnr) / 2.0))


def ood_metrics(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> dict[str, float]:
    """Standard OOD detection metrics; IN-DISTRIBUTION is the POSITIVE class, higher = more in-dist.

    Args:
      scores_in: scores of the in-distribution test images (any shape, flattened).
      scores_out: scores of the out-of-distribution images (any shape, flattened).
      tpr: fraction of in-distribution images the threshold keeps (0.95 for "FPR at 95% TPR").

    Returns a dict of floats (counts as ints):
      auroc: P(score_in > score_out) + 0.5 P(tie) (= sklearn roc_auc_score, in-dist labelled 1).
      aupr_in: average precision with in-distribution positive.
      aupr_out: average precision with OOD positive, on negated scores.
      threshold: the largest t with mean(scores_in >= t) >= tpr (see :func:`threshold_at_tpr`).
      fpr95: fraction of OOD scores >= threshold (OOD images wrongly kept at that TPR).
      detection_at_95: fraction of OOD scores < threshold (flagged) = 1 - fpr95.
      detection_accuracy: the usual "detection accuracy", max over thresholds t of
        (TPR(t) + TNR(t)) / 2 (in-distribution kept at score >= t, OOD flagged below t; a
        threshold above every score counts too, so it is at least 0.5).
      num_in, num_out: the two set sizes.
    All fractions lie in [0, 1]. The "95" names refer to ``tpr`` whatever its value.
    """
    scores_in = _scores(scores_in, "scores_in")
    scores_out = _scores(scores_out, "scores_out")
    threshold = threshold_at_tpr(scores_in, tpr)
    fpr = float(np.mean(scores_out >= threshold))
    return {
        "auroc": _auroc(scores_in, scores_out),
        "aupr_in": _average_precision(scores_in, scores_out),
        "aupr_out": _average_precision(-scores_out, -scores_in),
        "fpr95": fpr,
        "detection_at_95": float(np.mean(scores_out < threshold)),
        "detection_accuracy": detection_accuracy(scores_in, scores_out),
        "threshold": threshold,
        "num_in": int(scores_in.size),
        "num_out": int(scores_out.size),
    }


def auroc_by_class(
    scores_in: Any, scores_out: Any, labels_out: Any, class_names: list[str] | None = None
) -> dict[str, float]:
    """AUROC of every in-distribution score against the OOD images of each class alone.

    Which OOD classes a detector confuses with the in-distribution ones (a near-OOD class beside an
    in-distribution sibling, e.g. trucks beside automobiles, sits near or below 0.5). Keys are
    ``class_names[label]`` (or the label as text), in label order.
    """
    scores_in = _scores(scores_in, "scores_in")
    scores_out = _scores(scores_out, "scores_out")
    labels = np.asarray(labels_out).ravel()
    if labels.shape != scores_out.shape:
        raise SemsadError(f"{labels.size} OOD labels for {scores_out.size} OOD scores.")
    name = lambda c: str(class_names[c]) if class_names is not None else str(c)
    return {name(c): _auroc(scores_in, scores_out[labels == c]) for c in np.unique(labels)}
