"""Trains and packages the detectors that ship under pretrained/, each with its card.

    python scripts/pretrained.py train digits         # main.py --mode=all, wall and CPU time kept
    python scripts/pretrained.py card digits          # pretrained/digits.{tar.gz,json,md}

``train`` runs ``main.py --config=configs/<config>.py --workdir=runs/pretrained/NAME --mode=all``
in a child process and records its wall and CPU minutes, the machine and the commit in
``runs/pretrained/NAME/compute.json``. ``card`` exports the workdir as one archive
(``semsad-jax --mode=export``), and writes the card: ``NAME.json`` (what CI checks: the archive's
sha256, every detector's scores on a few fixed images, the protocol and its AUROCs) and ``NAME.md``
(the same for people, with the intended use and the limits). The registry of shipped names
(``semsad_jax/workdir/shipped.py``) takes the sha256 printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DETECTORS = ("semsad", "knn", "mahalanobis", "pixels_knn")
FLOORS = ("knn", "mahalanobis", "pixels_knn")
# Each shipped detector: its config, the images of its score check and what it is for.
SHIPPED = {
    "digits": {
        "config": "digits",
        "title": "scikit-learn digits 0-4 (the demo)",
        "check": "sklearn:digits/test?classes=0,5&limit=6",
        "use": (
            "A demonstration: the README's demo run, packaged. In distribution: handwritten "
            "digits 0-4 of scikit-learn's 8 x 8 digits (upscaled to 16 px); OOD: digits 5-9 and "
            "the far-OOD suite. Restores and scores in seconds on a CPU, so it is what the tests "
            "and the notebook use when they need a real trained detector quickly."
        ),
        "limits": (
            "Trained on 721 tiny grey images (digits 0-4) for 30 + 20 epochs: it knows nothing about "
            "photographs. Raw pixels (pixels_knn) separate 0-4 from 5-9 better than any learnt "
            "detector here; do not read its numbers as SemSAD's quality."
        ),
    },
    "cifar10_cpu": {
        "config": "cifar10_cpu",
        "title": "CIFAR-10, all ten classes (16 px, CPU-sized)",
        "check": "sklearn:sample_images?limit=4",
        "use": (
            "Far-OOD screening of small natural photographs like CIFAR-10's (aeroplanes, cars, "
            "birds, cats, deer, dogs, frogs, horses, ships, trucks) at 16 x 16 pixels: flagging "
            "images from other domains (noise, flat colours, drawings, text, digits). A "
            "starting point to restore and score in a notebook without training, and a "
            "reference to compare your own runs with."
        ),
        "limits": (
            "Trained on a 2-core CPU for 14 minutes, not on a GPU for days: 10,000 training "
            "images at 16 px and width-16 ResNet-18s, far below the paper's setting, so its "
            "numbers are far below the paper's. Its encoder's kNN accuracy (37.8%) is below "
            "that of raw pixels (39.8%): it has not learnt CIFAR-10's classes, so it cannot "
            "tell one class from another, nor near-OOD photographs (CIFAR-100, SVHN) from "
            "CIFAR-10. Even far OOD is weak: no set reaches 90 AUROC, uniform noise passes "
            "SemSAD (60.6, where mahalanobis gives 84.0) and digits pass it more often than "
            "raw pixels let them (77.4 against 98.0): choose the detector per task with "
            "det.score(x, detector=...), and do not use its flags for decisions that matter. "
            "Images are resized to 16 px, so fine detail is lost. Its thresholds keep 95% of "
            "CIFAR-10 test images; other in-distribution data needs its own threshold."
        ),
    },
}


def _workdir(name: str) -> str:
    return os.path.join(ROOT, "runs", "pretrained", name)


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()}-core {model}, {platform.system()}, Python {platform.python_version()}"


def _source_sha256(spec: str) -> str | None:
    """sha256 of the file an ``archive:`` / ``npz:`` spec reads (None for embedded sources)."""
    from semsad_jax.workdir.archive import file_sha256

    kind, _, rest = spec.partition(":")
    path = rest.split("!")[0].split("?")[0]
    return file_sha256(path) if kind in ("archive", "npz") and os.path.isfile(path) else None


def train(name: str) -> None:
    workdir = _workdir(name)
    config = os.path.join(ROOT, "configs", SHIPPED[name]["config"] + ".py")
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}",
           f"--workdir={workdir}", "--mode=all", "--config.progress=False"]  # fmt: skip
    t0, commit = time.time(), _commit()
    subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    compute = {
        "command": " ".join(["python main.py", *cmd[2:]]).replace(ROOT + "/", ""),
        "wall_minutes": round((time.time() - t0) / 60, 2),
        "cpu_minutes": round((usage.ru_utime + usage.ru_stime) / 60, 2),
        "machine": _machine(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
    }
    with open(os.path.join(workdir, "compute.json"), "w") as f:
        json.dump(compute, f, indent=2)
    print(json.dumps(compute, indent=2))


def card(name: str) -> None:
    import jax

    from semsad_jax import Detector
    from semsad_jax.data import load_images
    from semsad_jax.evaluation.evaluate import versions
    from semsad_jax.workdir.archive import export_detector
    from semsad_jax.workdir.archive import file_sha256 as sha256_of

    spec, workdir = SHIPPED[name], _workdir(name)
    archive = os.path.join(ROOT, "pretrained", f"{name}.tar.gz")
    export_detector(workdir, archive, overwrite=True)
    with open(os.path.join(workdir, "compute.json")) as f:
        compute = json.load(f)
    with open(os.path.join(workdir, "eval", "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(workdir, "encoder", "stage.json")) as f:
        encoder = json.load(f)
    with open(os.path.join(workdir, "discriminator", "stage.json")) as f:
        discriminator = json.load(f)
    det = Detector.restore(archive)
    images = load_images(spec["check"], det.image_size, cache_dir="none").images
    scores = det.scores(images)
    table = {
        d: {s: {k: round(100 * m[k], 2) for k in ("auroc", "fpr95")} for s, m in sets.items()}
        for d, sets in results["detectors"].items()
    }
    data = results["config"]["data"]
    out = {
        "name": name,
        "title": spec["title"],
        "archive": f"{name}.tar.gz",
        "sha256": sha256_of(archive),
        "bytes": os.path.getsize(archive),
        "config": f"configs/{spec['config']}.py",
        "training_data": {
            "spec": data["train"],
            "images": encoder.get("num_train"),
            "digest": encoder["identity"].get("data.train_digest"),
            "image_size": data["image_size"],
            "file_sha256": _source_sha256(data["train"]),
        },
        "compute": {
            **compute,
            "encoder_minutes": encoder.get("train_minutes"),
            "discriminator_minutes": discriminator.get("train_minutes"),
            "encoder_steps": encoder.get("total_steps"),
            "discriminator_steps": discriminator.get("total_steps"),
            "encoder_knn_accuracy": encoder.get("knn_accuracy"),
            "pixel_knn_accuracy": encoder.get("pixel_knn_accuracy"),
        },
        "protocol": {
            "in_distribution": results["in_distribution"],
            "num_in": results["num_in"],
            "ood": results["ood"],
            "tpr": results["tpr"],
        },
        "auroc": table,
        "thresholds": results["threshold_95"],
        "check": {
            "images": spec["check"],
            "scores": {d: [round(float(v), 6) for v in scores[d]] for d in DETECTORS},
            "nn": [int(i) for i in scores["nn"]],
        },
        "versions": versions(),
        "backend": jax.default_backend(),
        "use": spec["use"],
        "limits": spec["limits"],
    }
    with open(os.path.join(ROOT, "pretrained", f"{name}.json"), "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    with open(os.path.join(ROOT, "pretrained", f"{name}.md"), "w") as f:
        f.write(card_markdown(out))
    print(f"{archive}: {out['bytes']} bytes, sha256 {out['sha256']}")


def card_markdown(card: dict) -> str:
    """The card for people (``NAME.md``), from ``NAME.json``."""
    c, t = card["compute"], card["training_data"]
    lines = [
        f"# `{card['name']}`: {card['title']}",
        "",
        "```python",
        "from semsad_jax import Detector",
        "",
        f'det = Detector.restore("{card["name"]}")  # this archive: pretrained/{card["archive"]}',
        'scores = det.score(images_uint8)  # or detector="knn", "mahalanobis", ...',
        "```",
        "",
        f"**Intended use.** {card['use']}",
        "",
        f"**Limits.** {card['limits']}",
        "",
        "## What it is",
        "",
        "| | |",
        "|---|---|",
        f"| archive | `pretrained/{card['archive']}`, {card['bytes'] / 1e6:.1f} MB, sha256 "
        f"`{card['sha256']}` |",
        f"| config | [`{card['config']}`](../{card['config']}) |",
        f"| training data | `{t['spec']}`: {t['images']} images at {t['image_size']} px, "
        f"decoded-images digest `{t['digest']}`"
        + (f", file sha256 `{t['file_sha256']}`" if t.get("file_sha256") else "")
        + " |",
        f"| command | `{c['command']}` |",
        f"| commit | `{c['commit']}` ({c['date']}) |",
        f"| compute | {c['wall_minutes']} min wall, {c['cpu_minutes']} CPU min (encoder "
        f"{c['encoder_minutes']} min, {c['encoder_steps']} steps; discriminator "
        f"{c['discriminator_minutes']} min, {c['discriminator_steps']} steps), {c['machine']}, "
        f"{card['backend']}{'; ' + c['note'] if c.get('note') else ''} |",
        f"| encoder kNN accuracy (the monitor, on the test split) | "
        f"{100 * c['encoder_knn_accuracy']:.1f}% (raw pixels, the floor: "
        f"{100 * c['pixel_knn_accuracy']:.1f}%) |",
        f"| versions | {', '.join(f'{k} {v}' for k, v in card['versions'].items())} |",
        "",
        "## Its numbers beside its floors",
        "",
        f"In distribution: `{card['protocol']['in_distribution']}` ({card['protocol']['num_in']} "
        "images). AUROC % / FPR % at the threshold that keeps "
        f"{100 * card['protocol']['tpr']:.0f}% of them, in-distribution positive; `knn` and "
        "`mahalanobis` on the same encoder's penultimate features, `pixels_knn` on raw pixels "
        "(the floor, no learning). Every detector restores with the archive: "
        "`det.score(x, detector=...)`, `--mode=score --detector=...`.",
        "",
        "| OOD set | spec | " + " | ".join(DETECTORS) + " |",
        "|---|---|" + "---|" * len(DETECTORS),
    ]
    auroc = card["auroc"]
    for name, spec in card["protocol"]["ood"].items():
        values = [auroc[d][name] for d in DETECTORS]
        best = max(v["auroc"] for v in values)
        cells = [
            ("**{:.1f}**" if v["auroc"] == best else "{:.1f}").format(v["auroc"])
            + f" / {v['fpr95']:.1f}"
            for v in values
        ]
        lines.append(f"| {name} | `{spec}` | " + " | ".join(cells) + " |")
    means = [
        sum(auroc[d][n]["auroc"] for n in card["protocol"]["ood"]) / len(card["protocol"]["ood"])
        for d in DETECTORS
    ]
    lines.append("| mean | | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    lines += [
        "",
        "CI restores this archive and checks every detector's scores on "
        f"`{card['check']['images']}` against `{card['name']}.json`, and that this protocol "
        "reproduces the AUROCs above (tests/test_pretrained.py).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("train", "card"))
    parser.add_argument("name", choices=sorted(SHIPPED))
    args = parser.parse_args()
    (train if args.action == "train" else card)(args.name)


if __name__ == "__main__":
    main()
