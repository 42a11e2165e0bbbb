"""What compute buys: AUROC and encoder kNN accuracy against training compute, fitted and extrapolated.

    python -m benchmarks scaling_curve --runs runs/scale_e7 runs/scale_e15 runs/val_B \\
        runs/scale_e60 runs/scale_e120 --protocol=class_split --out=benchmarks/results/DATE/scaling

Each ``--runs`` entry is a ``cifar10_quality`` output folder (its ``results.json`` and its workdirs)
of one encoder budget; all must share the protocol, the split (refused otherwise), the seed(s)
and the discriminator. Compute is
the encoder's training views (steps x batch x 2): the network, the image size and the batch are the
same in every run, so views are proportional to FLOPs (``--gflop-per-view``, default the width-16
16 px ResNet-18 training step's 20.65 GFLOP per 512 views from ``throughput --preset=cpu``) and
to CPU time (the encoder stages' minutes are recorded beside them).

For every detector, AUROC is fitted as ``a + b * log10(views)`` (least squares over the runs; the
fit is a trend line, not a law), and the compute at which semsad's line would cross each floor's
line is solved for; ``never`` where semsad's slope is not above the floor's (the lines diverge or
run parallel). Writes ``OUT.json``, ``OUT.md`` (table, fits, crossings and their assumptions) and
``OUT.png`` (AUROC and kNN accuracy against views, log scale, fitted lines dashed).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from benchmarks.timing import write_json

DETECTORS = ("semsad", "knn", "mahalanobis", "pixels_knn")
NEAR_OOD = ("last_five", "other_nine")
GFLOP_PER_VIEW = 20.65 / 512
TARGET_KNN = 0.70  # the meaning issue's target for the class split's encoder


def read_run(path: str, protocol: str) -> dict:
    """One run's point: views, encoder / discriminator steps and minutes, AUROCs, kNN accuracy."""
    with open(os.path.join(path, "results.json")) as f:
        result = json.load(f)
    aurocs = {}
    for record in result["records"]:
        if record["protocol"] == protocol and record["ood"] in NEAR_OOD:
            aurocs.setdefault(record["detector"], []).append(record["auroc"])
    split = result.get("split", "validation")
    stages = {}
    seed_dirs = os.path.join(path, "work", split, protocol)
    for seed in sorted(os.listdir(seed_dirs)):
        for mode in sorted(os.listdir(os.path.join(seed_dirs, seed))):
            for stage in ("encoder", "discriminator"):
                meta = os.path.join(seed_dirs, seed, mode, stage, "stage.json")
                if os.path.exists(meta):
                    with open(meta) as f:
                        stages.setdefault(stage, []).append(json.load(f))
    encoder = stages["encoder"][0]
    batch = result["budget"]["enc_batch"]
    return {
        "run": path,
        "split": split,
        "encoder_steps": encoder["total_steps"],
        "encoder_epochs": encoder["epochs"],
        "views": 2 * batch * encoder["total_steps"],
        "encoder_minutes": encoder.get("train_minutes"),
        "discriminator_steps": stages["discriminator"][0]["total_steps"],
        "knn_accuracy": float(np.mean([s["knn_accuracy"] for s in stages["encoder"]])),
        "pixel_knn_accuracy": encoder.get("pixel_knn_accuracy"),
        "auroc": {d: float(np.mean(v)) for d, v in aurocs.items()},
    }


def fit(points: list[dict]) -> dict:
    """{detector: (a, b)} of AUROC = a + b log10(views), and {floor: views where semsad crosses}."""
    x = np.log10([p["views"] for p in points])
    lines = {}
    for det in DETECTORS:
        y = [p["auroc"].get(det) for p in points]
        if None not in y and len(set(x)) > 1:
            b, a = np.polyfit(x, y, 1)
            lines[det] = (float(a), float(b))
    if len(set(x)) > 1:
        b, a = np.polyfit(x, [p["knn_accuracy"] for p in points], 1)
        lines["encoder_knn_accuracy"] = (float(a), float(b))
    crossings = {}
    if "semsad" in lines:
        a_s, b_s = lines["semsad"]
        for det, (a, b) in lines.items():
            if det not in ("semsad", "encoder_knn_accuracy"):
                crossings[det] = (
                    float(10 ** ((a - a_s) / (b_s - b))) if b_s > b else None
                )  # views where the lines meet; None = never (semsad's slope is not above)
    return {"lines": lines, "crossings": crossings}


def plot(points: list[dict], fits: dict, path: str, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax, ax2 = fig.subplots(1, 2)
    views = np.array([p["views"] for p in points], float)
    grid = np.logspace(np.log10(views.min()), np.log10(views.max()) + 1, 50)
    for det in DETECTORS:
        y = [100 * p["auroc"].get(det, np.nan) for p in points]
        (line,) = ax.plot(views, y, "o-", label=det)
        if det in fits["lines"]:
            a, b = fits["lines"][det]
            ax.plot(grid, 100 * (a + b * np.log10(grid)), "--", color=line.get_color(), lw=0.8)
    ax.set(xscale="log", xlabel="encoder training views", ylabel="AUROC (%)", title=title)
    ax.legend(fontsize=8)
    ax2.plot(views, [100 * p["knn_accuracy"] for p in points], "o-", label="encoder kNN")
    ax2.axhline(100 * points[0]["pixel_knn_accuracy"], ls=":", color="gray", label="raw pixels")
    ax2.set(xscale="log", xlabel="encoder training views", ylabel="kNN accuracy (%)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(points: list[dict], fits: dict, gflop_per_view: float) -> str:
    head = "| encoder epochs | steps | views | encoder min | kNN acc | " + " | ".join(DETECTORS)
    lines = [head + " |", "|" + "---|" * (5 + len(DETECTORS))]
    for p in points:
        cells = [p["encoder_epochs"], p["encoder_steps"], f"{p['views']:,}"]
        cells += [p["encoder_minutes"], f"{100 * p['knn_accuracy']:.1f}"]
        cells += [f"{100 * p['auroc'][d]:.1f}" if d in p["auroc"] else "-" for d in DETECTORS]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Fits, AUROC = a + b log10(views) (points per decade of compute):", ""]
    for det, (_, b) in fits["lines"].items():
        if det == "encoder_knn_accuracy":
            continue
        lines.append(f"- {det}: {100 * b:+.2f} AUROC points per 10x views")
    # the median run's rate: one run timed on a loaded machine does not move it
    minutes_per_view = np.median([p["encoder_minutes"] / p["views"] for p in points])

    def compute(views: float) -> str:
        return (
            f"{views:.3g} views = {views * gflop_per_view / 1e6:.3g} PFLOP "
            f"= {views * minutes_per_view / 60:.3g} hours of this 2-core machine (wall)"
        )

    if "encoder_knn_accuracy" in fits["lines"]:
        a, b = fits["lines"]["encoder_knn_accuracy"]
        lines.append(f"- the encoder's kNN accuracy: {100 * b:+.2f} points per 10x views")
        if b > 0:
            lines += ["", f"The encoder's kNN accuracy would reach {TARGET_KNN:.0%} at "
                      f"{compute(10 ** ((TARGET_KNN - a) / b))}."]  # fmt: skip
    lines += ["", "Where semsad's line would cross each floor's, if the trends held:", ""]
    for det, views in fits["crossings"].items():
        if views is None:
            lines.append(f"- {det}: never (semsad's slope is not above {det}'s)")
        else:
            lines.append(f"- {det}: {compute(views)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="cifar10_quality output folders")
    p.add_argument("--protocol", default="class_split")
    p.add_argument("--gflop-per-view", type=float, default=GFLOP_PER_VIEW)
    p.add_argument("--out", required=True, help="OUT.json, OUT.md and OUT.png are written")
    args = p.parse_args(argv)
    points = sorted((read_run(r, args.protocol) for r in args.runs), key=lambda q: q["views"])
    splits = sorted({q["split"] for q in points})
    if len(splits) > 1:
        raise SystemExit(f"--runs mix the {' and '.join(splits)} splits; one curve per split")
    fits = fit(points)
    text = markdown(points, fits, args.gflop_per_view)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot(points, fits, args.out + ".png", f"{args.protocol}, {splits[0]}")
    with open(args.out + ".md", "w") as f:
        f.write(text + "\n")
    result = {"protocol": args.protocol, "split": splits[0], "points": points, **fits}
    write_json(args.out + ".json", result)
    return result


if __name__ == "__main__":
    main()
