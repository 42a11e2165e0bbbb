"""Text tables of one evaluation, and the multi-run report (``--mode=report --workdirs=A,B,C``).

The report reads each run's ``eval/results.json`` and ``eval/scores.npz`` and gives, per detector and
OOD set:

* mean and spread (sample standard deviation, ddof=1; 0 for a single run) of every metric over runs
  (seeds, or the classes of a one-class protocol when their OOD sets share a name);
* the paper's majority vote: an image is flagged OOD when MORE THAN HALF of the runs flag it, each run
  at its own stored threshold (``threshold_95``, which keeps ``eval.tpr`` of its in-distribution test
  images). ``detection_rate`` = fraction of OOD images the vote flags, ``false_alarm_rate`` = fraction
  of in-distribution test images it flags. Only possible when every run scored the same images
  (same in-distribution and OOD specs and counts); otherwise the report says why it was skipped.

In-distribution is the positive class everywhere; higher scores mean more in-distribution.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from semsad_jax.errors import SemsadError
from semsad_jax.workdir.layout import Workdir, read_json, write_json

log = logging.getLogger(__name__)
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_at_95", "detection_accuracy")
HEADERS = {
    "auroc": "AUROC",
    "aupr_in": "AUPR-In",
    "aupr_out": "AUPR-Out",
    "fpr95": "FPR@95",
    "detection_at_95": "Det@95",
    "detection_accuracy": "DetAcc",
}
IN_NAME = "in_distribution"
POSITIVE = "in-distribution is the positive class; higher score = more in-distribution"


def scores_key(detector: str, set_name: str) -> str:
    """Key of a detector's scores of one set in ``eval/scores.npz`` (set ``in_distribution`` or OOD)."""
    return f"{detector}/{set_name}"


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first columns, right-aligned numbers, one space-padded line per row."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def results_table(results: dict) -> str:
    """The printed table of one evaluation (metrics in %), with its title and the positive class."""
    tpr = 100 * float(results.get("tpr", 0.95))
    rows = []
    for detector, sets in results["detectors"].items():
        for name, m in sets.items():
            rows.append(
                [detector, name, str(m["num_ood"])] + [f"{100 * m[k]:.2f}" for k in METRICS]
            )
    header = ["detector", "OOD set", "n_ood"] + [HEADERS[k] for k in METRICS]
    title = (
        f"SemSAD evaluation [bn_mode: {results['bn_mode']}]"
        + (
            ""
            if results.get("label_free", True)
            else " [NOT LABEL-FREE: neighbourhoods from labels, a diagnostic]"
        )
        + "\n"
        f"in-distribution: {results['in_distribution']} ({results['num_in']} images); {POSITIVE}\n"
        f"metrics in %; @95 = at the threshold keeping {tpr:g}% of in-distribution test images; "
        f"DetAcc = max over thresholds of (TPR + TNR) / 2; knn / mahalanobis on the encoder's "
        f"{results.get('baseline_features', 'head')} features, pixels_knn on raw pixels"
    )
    return title + "\n" + stages_lines(results.get("stages", {})) + text_table(header, rows)


def stages_lines(stages: dict) -> str:
    """What each evaluated network was restored from, one line per stage (ending in a newline),
    with a NOTE where the config asked for other epochs than the stage was trained for."""
    lines = []
    for stage, p in stages.items():
        lines.append(
            f"{stage}: trained {p['epochs']} epochs ({p['total_steps']} steps), restored step "
            f"{p['restored_step']}, identity {p['identity_digest']}"
        )
        if p.get("config_epochs") != p["epochs"]:
            lines.append(
                f"NOTE: the config asks for {p.get('config_epochs')} {stage} epochs; the "
                f"{stage} evaluated here was trained for {p['epochs']}"
            )
    return "".join(line + "\n" for line in lines)


# ---- multi-run report ----------------------------------------------------------------------------


def load_run(workdir: str) -> tuple[dict, dict[str, np.ndarray] | None]:
    """(results.json, scores.npz arrays or None) of one evaluated workdir."""
    wd = Workdir(workdir)
    results = read_json(wd.results_json)
    if results is None:
        raise SemsadError(
            f"{wd.results_json} is missing; run --mode=eval with --workdir={workdir} first."
        )
    npz = wd.scores_npz
    scores = None
    if os.path.exists(npz):
        with np.load(npz) as data:
            scores = {k: data[k] for k in data.files}
    return results, scores


def _spread(values: list[float]) -> dict:
    arr = np.asarray(values, np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "values": [float(v) for v in arr]}


def aggregate(runs: list[dict]) -> dict:
    """detector -> OOD set -> metric -> {mean, std (ddof=1), values}; sets some run lacks are left out."""
    out: dict = {}
    for detector in sorted(runs[0]["detectors"], key=lambda d: (d != "semsad", d)):
        for name in runs[0]["detectors"][detector]:
            present = [
                r["detectors"][detector][name]
                for r in runs
                if name in r["detectors"].get(detector, {})
            ]
            if len(present) < len(runs):
                log.warning("%s / %s is missing from some runs; left out", detector, name)
                continue
            out.setdefault(detector, {})[name] = {  # metrics an older run lacks are left out
                k: _spread([m[k] for m in present]) for k in METRICS if all(k in m for m in present)
            }
    return out


def _same_images(runs: list[dict]) -> str | None:
    """None when every run scored the same sets (specs and counts); else why not."""
    first = runs[0]
    for r in runs[1:]:
        for key in ("in_distribution", "num_in", "ood"):
            if r.get(key) != first.get(key):
                return f"runs differ in {key} ({first.get(key)!r} vs {r.get(key)!r})"
    return None


def majority_vote(runs: list[dict], scores: list[dict[str, np.ndarray] | None]) -> dict:
    """The paper's vote over runs: {"detectors": detector -> OOD set -> rates} or {"skipped": why}.

    Run r flags image i when its score is below run r's ``threshold_95[detector]``; the vote flags i
    when more than half of the runs do.
    """
    why = _same_images(runs)
    if why is None and any(s is None for s in scores):
        why = "a run has no eval/scores.npz"
    if why is not None:
        return {"skipped": why}

    def voted(detector: str, set_name: str) -> np.ndarray:
        flags = [
            s[scores_key(detector, set_name)] < r["threshold_95"][detector]
            for r, s in zip(runs, scores)
        ]
        return 2 * np.sum(flags, axis=0) > len(runs)

    out: dict = {}
    for detector, sets in aggregate(runs).items():
        false_alarm = float(np.mean(voted(detector, IN_NAME)))
        for name in sets:
            out.setdefault(detector, {})[name] = {
                "detection_rate": float(np.mean(voted(detector, name))),
                "false_alarm_rate": false_alarm,
            }
    return {"num_runs": len(runs), "detectors": out}


def report_table(report: dict) -> str:
    """Printed table of a multi-run report: mean ± std (%) and the majority vote."""
    n = report["num_runs"]
    header = ["detector", "OOD set"] + [HEADERS[k] for k in METRICS] + ["vote det", "vote FA"]
    vote = report["majority_vote"].get("detectors", {})
    rows = []
    for detector, sets in report["metrics"].items():
        for name, metrics in sets.items():
            cells = [
                f"{100 * m['mean']:.2f}±{100 * m['std']:.2f}" if m else "-"
                for m in (metrics.get(k) for k in METRICS)
            ]
            v = vote.get(detector, {}).get(name)
            votes = (
                [f"{100 * v[k]:.2f}" for k in ("detection_rate", "false_alarm_rate")]
                if v
                else ["-", "-"]
            )
            rows.append([detector, name, *cells, *votes])
    title = (
        f"SemSAD report over {n} runs [bn_mode: {', '.join(report['bn_modes'])}]; {POSITIVE}\n"
        f"metrics in %, mean±std (ddof=1) over runs; vote det / vote FA = OOD / in-distribution "
        f"images flagged by a majority of runs at each run's stored threshold"
    )
    if "skipped" in report["majority_vote"]:
        title += f"\nmajority vote skipped: {report['majority_vote']['skipped']}"
    return title + "\n" + text_table(header, rows)


def run_report(workdirs: list[str], out_dir: str | None = None) -> dict:
    """Aggregates evaluated workdirs; writes report.json and report.txt and prints the table.

    Args:
      workdirs: evaluated run directories (each with eval/results.json, ideally eval/scores.npz).
      out_dir: output directory (``eval.report_dir``); None or "": ``<common parent of
        workdirs>/report``.
    Returns:
      the report dict (also in report.json).
    """
    workdirs = [os.path.abspath(os.path.expanduser(w)) for w in workdirs if w]
    if not workdirs:
        raise SemsadError("no workdirs to report on; pass --workdirs=A,B,C (evaluated runs).")
    loaded = [load_run(w) for w in workdirs]
    runs = [r for r, _ in loaded]
    report = {
        "workdirs": workdirs,
        "num_runs": len(runs),
        "positive_class": POSITIVE,
        "std": "sample standard deviation over runs (ddof=1; 0 for one run)",
        "bn_modes": sorted({r["bn_mode"] for r in runs}),
        "in_distribution": sorted({r["in_distribution"] for r in runs}),
        "metrics": aggregate(runs),
        "majority_vote": majority_vote(runs, [s for _, s in loaded]),
    }
    out_dir = out_dir or os.path.join(os.path.commonpath(workdirs), "report")
    table = report_table(report)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "report.json"), report)
    with open(os.path.join(out_dir, "report.txt"), "w") as f:
        f.write(table + "\n")
    print(table)
    return report
