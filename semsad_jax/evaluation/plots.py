"""Evaluation plots as PNG files (matplotlib's Agg renderer; pyplot and its global state are not used).

* :func:`score_histograms`: distributions of the SemSAD score in the style of the paper's Figure 4
  (training positive pairs, training negative pairs, in-distribution test, each OOD set).
* :func:`roc_curves`: ROC curves, in-distribution = positive class, one panel per OOD set.
"""

from __future__ import annotations

import numpy as np

from semsad_jax.method.metrics import roc_curve_points
from semsad_jax.workdir.layout import write_file

COLOURS = ("tab:green", "tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def score_histograms(
    path: str,
    groups: dict[str, np.ndarray],
    *,
    title: str,
    threshold: float | None = None,
    bins: int = 40,
) -> str:
    """Overlaid density histograms of score groups on shared bins; writes ``path`` (PNG).

    Args:
      groups: label -> float [n] scores (e.g. "train positive pairs", "in-dist test", "OOD: svhn").
      title: figure title (carries the bn_mode).
      threshold: drawn as a dashed vertical line (images left of it are flagged OOD).
    Returns:
      ``path``.
    """
    groups = {k: np.asarray(v, np.float64).ravel() for k, v in groups.items() if np.size(v)}
    values = np.concatenate(list(groups.values())) if groups else np.zeros(1)
    lo, hi = float(values.min()), float(values.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    for i, (label, scores) in enumerate(groups.items()):
        colour = COLOURS[i % len(COLOURS)]
        ax.hist(scores, bins=edges, density=True, alpha=0.35, color=colour)
        ax.hist(
            scores,
            bins=edges,
            density=True,
            histtype="step",
            linewidth=1.5,
            color=colour,
            label=f"{label} (n={scores.size})",
        )
    if threshold is not None:
        ax.axvline(
            threshold,
            color="black",
            linestyle="--",
            linewidth=1,
            label="threshold (keeps eval.tpr of in-dist test)",
        )
    ax.set_xlabel("score s(training neighbour, image)   (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def roc_curves(
    path: str,
    in_scores: dict[str, np.ndarray],
    ood_scores: dict[str, dict[str, np.ndarray]],
    *,
    title: str,
) -> str:
    """ROC curves (in-distribution positive), one panel per OOD set, one line per detector.

    Args:
      in_scores: detector -> float [n_in] in-distribution test scores.
      ood_scores: OOD set name -> detector -> float [n_ood] scores.
      title: figure title (carries the bn_mode).
    Returns:
      ``path``.
    """
    names = list(ood_scores)
    fig = _figure(4.2 * max(1, len(names)), 4.2)
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, max(1, len(names)), j + 1)
        for i, (detector, scores_out) in enumerate(ood_scores[name].items()):
            fpr, tpr = roc_curve_points(in_scores[detector], scores_out)
            auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid
            ax.plot(
                fpr, tpr, color=COLOURS[(i + 2) % len(COLOURS)], label=f"{detector} {auroc:.3f}"
            )
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("OOD images kept (FPR)")
        ax.set_ylabel("in-distribution images kept (TPR)")
        ax.set_title(f"vs {name}", fontsize=10)
        ax.legend(title="AUROC", fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    write_file(path, lambda f: fig.savefig(f, format="png"), 1 << 20)  # atomic; DiskFull if full
    return path
