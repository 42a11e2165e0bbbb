"""Aggregation of quality records over seeds, and the markdown report of ``cifar10_quality.py``.

A record is one (protocol, seed, detector, bn_mode, ood) with float metrics ``auroc``, ``fpr95``
(fractions in [0, 1]). :func:`aggregate` gives mean and sample standard deviation (ddof 1; 0 for a
single seed) over seeds per (protocol, detector, bn_mode, ood), plus a ``one_class (mean)``
protocol: per seed, the mean over the ``one_class_*`` protocols, then mean and spread over seeds.
:func:`markdown_report` says which split the numbers are (``result["split"]``: validation, to
choose; report, the test split) and gives the one-class protocols per class with their mean.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

METRICS = ("auroc", "fpr95")
_ORDER = {"semsad": 0, "knn": 1, "mahalanobis": 2, "pixels_knn": 3, "rotation": 4, "combined": 5}
ONE_CLASS_MEAN = "one_class (mean)"
SPLIT_TITLES = {
    "validation": (
        "VALIDATION (held-out CIFAR-10 training images)",
        "Validation protocols: in-distribution and OOD images are held out of the CIFAR-10 "
        "training split ({holdout} per class, never trained on), far-OOD sets are their held-out "
        "halves; use these numbers, and only these, to choose recipes, budgets and "
        "hyper-parameters.",
    ),
    "report": (
        "REPORT (CIFAR-10 test split)",
        "Report protocols: scored on the CIFAR-10 test split and the far-OOD sets' other halves; "
        "run once, after choosing on the validation protocols; choose nothing on these numbers.",
    ),
}


def _spread(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(records: list[dict]) -> list[dict]:
    """Rows {protocol, detector, bn_mode, ood, seeds, auroc_mean, auroc_std, fpr95_mean, ...}."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in records:
        groups[(r["protocol"], r["detector"], r["bn_mode"], r["ood"])][r["seed"]] = r
    one_class: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (protocol, detector, mode, ood), by_seed in groups.items():
        if protocol.startswith("one_class_"):
            for seed, r in by_seed.items():
                one_class[(detector, mode, ood)][seed].append(r)
    rows = []
    for (protocol, detector, mode, ood), by_seed in groups.items():
        row = {
            "protocol": protocol,
            "detector": detector,
            "bn_mode": mode,
            "ood": ood,
            "seeds": len(by_seed),
        }
        for m in METRICS:
            row[f"{m}_mean"], row[f"{m}_std"] = _spread([r[m] for r in by_seed.values()])
        rows.append(row)
    for (detector, mode, ood), by_seed in one_class.items():
        row = {
            "protocol": ONE_CLASS_MEAN,
            "detector": detector,
            "bn_mode": mode,
            "ood": ood,
            "seeds": len(by_seed),
            "classes": max(len(v) for v in by_seed.values()),
        }
        for m in METRICS:
            per_seed = [float(np.mean([r[m] for r in rs])) for rs in by_seed.values()]
            row[f"{m}_mean"], row[f"{m}_std"] = _spread(per_seed)
        rows.append(row)
    rows.sort(key=lambda r: (r["protocol"], r["ood"], _ORDER.get(r["detector"], 9), r["bn_mode"]))
    return rows


def is_far(ood: str) -> bool:
    return ood.startswith("far_")


def far_rows(records: list[dict]) -> list[dict]:
    """Per far-OOD set and detector: AUROC mean and spread over every (protocol, seed), and min."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if is_far(r["ood"]):
            groups[(r["ood"], r["detector"], r["bn_mode"])].append(r["auroc"])
    rows = []
    for (ood, detector, mode), values in sorted(groups.items()):
        mean, std = _spread(values)
        rows.append(
            {
                "ood": ood,
                "detector": detector,
                "bn_mode": mode,
                "runs": len(values),
                "auroc_mean": mean,
                "auroc_std": std,
                "auroc_min": float(min(values)),
            }
        )
    return rows


def _columns(rows: list[dict]) -> list[tuple[str, str]]:
    pairs = {(r["detector"], r["bn_mode"]) for r in rows}
    return sorted(pairs, key=lambda c: (_ORDER.get(c[0], 9), c[1]))


def _name(detector: str, mode: str) -> str:
    return detector if mode == "-" else f"{detector} ({mode})"


def _classes(count: int) -> str:
    return f"{count} class" + ("" if count == 1 else "es")


def one_class_table(summary: list[dict]) -> list[str]:
    """Lines of the one-class table: a row per class (and near-OOD set), AUROC mean +- std over
    seeds per detector, then the mean over the classes (spread over seeds); [] without one-class.
    """
    rows = [
        r
        for r in summary
        if (r["protocol"].startswith("one_class_") or r["protocol"] == ONE_CLASS_MEAN)
        and not is_far(r["ood"])
    ]
    if not rows:
        return []
    columns = _columns(rows)
    cell = {(r["protocol"], r["ood"], r["detector"], r["bn_mode"]): r for r in rows}
    keys = sorted(
        {(r["protocol"], r["ood"]) for r in rows}, key=lambda k: (k[0] == ONE_CLASS_MEAN, k)
    )
    classes = max((r.get("classes", 0) for r in rows if r["protocol"] == ONE_CLASS_MEAN), default=0)
    lines = [
        "",
        "One-class protocols (in = one class, OOD = the others): AUROC in %, mean +- std over "
        f"seeds; the last row is the mean over the {_classes(classes)}.",
        "",
        "| class | OOD | " + " | ".join(_name(*c) for c in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for protocol, ood in keys:
        label = (
            f"mean ({_classes(classes)})"
            if protocol == ONE_CLASS_MEAN
            else protocol.removeprefix("one_class_")
        )
        cells = []
        for d, m in columns:
            r = cell.get((protocol, ood, d, m))
            cells.append(f"{100 * r['auroc_mean']:.1f} +- {100 * r['auroc_std']:.1f}" if r else "-")
        lines.append(f"| {label} | {ood} | " + " | ".join(cells) + " |")
    return lines


def _minutes_cell(runs: list[dict], names: tuple[str, ...]) -> str:
    """ "CPU / wall" minutes of the stages ``names`` together, mean over ``runs``; "-" if absent."""
    if not all(n in r.get("cpu_seconds", {}) for r in runs for n in names):
        return "-"
    cpu = np.mean([sum(r["cpu_seconds"][n] for n in names) for r in runs]) / 60
    wall = np.mean([sum(r["seconds"][n] for n in names) for r in runs]) / 60
    return f"{cpu:.1f} / {wall:.1f}"


def minutes_table(records: list[dict]) -> list[str]:
    """Lines of the compute table: per protocol, the mean over seeds of each stage's CPU minutes
    (process CPU time, every thread) and wall minutes; SemSAD = encoder + discriminator."""
    runs: dict[tuple, dict] = {}
    for r in records:
        runs.setdefault((r["protocol"], r["seed"]), r)
    if not runs or not any("cpu_seconds" in r for r in runs.values()):
        return []
    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for (protocol, _), r in sorted(runs.items()):
        by_protocol[protocol].append(r)
    stages = ("encoder", "discriminator", "rotation")
    lines = [
        "",
        "Compute per run (mean over seeds): CPU minutes (process CPU time, all threads) / wall "
        "minutes of each stage, eval excluded; SemSAD = encoder + discriminator.",
        "",
        "| protocol | seeds | encoder | discriminator | SemSAD | rotation |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, rs in by_protocol.items():
        groups = [(n,) for n in stages[:2]] + [stages[:2], stages[2:]]
        cells = [_minutes_cell(rs, names) for names in groups]
        lines.append(f"| {protocol} | {len(rs)} | " + " | ".join(cells) + " |")
    return lines


def markdown_report(result: dict) -> str:
    """Header (split, budget, machine, minutes); the table of every protocol (AUROC / FPR95 in %,
    mean +- std), the one-class table (per class and their mean) and the far-OOD table."""
    b, m = result["budget"], result["machine"]
    overrides = ", ".join(f"{k}={v}" for k, v in result.get("overrides", []))
    title, note = SPLIT_TITLES.get(result.get("split"), ("", ""))
    lines = [
        f"# CIFAR-10 quality{', ' + title if title else ''}, budget {result['budget_name']}: "
        f"{b['image_size']} px, encoder width "
        f"{b['width']} x {b['enc_epochs']} epochs (batch {b['enc_batch']}), discriminator width "
        f"{b['disc_width']} x {b['disc_epochs']} epochs, {b['dtype']}, seeds {result['seeds']}",
        "",
        f"Machine: {m['backend']} ({', '.join(sorted(set(m['devices'])))}), {m['cpu_count']} CPUs; "
        f"{result['minutes']} minutes. AUROC and FPR at 95% TPR in %, in-distribution = positive; "
        "mean +- sample std over seeds.",
        f"Recipe overrides: {overrides or 'none'}."
        + ("" if result.get("label_free", True) else " NOT LABEL-FREE: a diagnostic run."),
        *([note.format(holdout=result.get("holdout_per_class", "?"))] if note else []),
        "",
        "| protocol | detector | bn mode | OOD | AUROC | FPR95 | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        if is_far(r["ood"]):
            continue
        cells = [r["protocol"], r["detector"], r["bn_mode"], r["ood"]]
        cells += [f"{100 * r[f'{k}_mean']:.1f} +- {100 * r[f'{k}_std']:.1f}" for k in METRICS]
        cells.append(str(r["seeds"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += one_class_table(result["summary"])
    lines += minutes_table(result.get("records", []))
    far = far_rows(result.get("records", []))
    if far:
        columns = _columns(far)
        cell = {(r["ood"], r["detector"], r["bn_mode"]): r for r in far}
        names = [_name(*c) for c in columns]
        lines += [
            "",
            "Far OOD: AUROC in %, mean (minimum) over every protocol and seed.",
            "",
            "| far-OOD set | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for ood in sorted({r["ood"] for r in far}):
            cells = []
            for d, m in columns:
                r = cell.get((ood, d, m))
                cells.append(
                    f"{100 * r['auroc_mean']:.1f} ({100 * r['auroc_min']:.1f})" if r else "-"
                )
            lines.append(f"| {ood} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
