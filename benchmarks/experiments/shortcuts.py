"""What drives the discriminator's score s: controlled pairs and image changes on a trained workdir.

    python -m benchmarks shortcuts --workdir=runs/c10 [--images=SPEC] [--limit=500] [--out=DIR]

Takes in-distribution test images x (``--images``, default the workdir's ``data.test``) and reports
the mean SemSAD score of:

* pairs: s(x, x) (the same image twice), s(nn(x), x) (the detection pair: nn = nearest training
  image by h), s(random training image, x);
* the detector's score of CHANGED copies of x, each testing one shortcut hypothesis: grayscale,
  blur (sigma 1.5), contrast halved, colour channels permuted, brightness x0.5, rotation by 90
  degrees, quadrants permuted, the image replaced by its mean colour (flat), uniform noise;
* the detector's score of every far-OOD set of the workdir's ``eval.ood`` whose name starts with
  ``far_``.

Each row also gives the AUROC of x against the changed images (in-distribution positive): 0.5 = s is
blind to the change, below 0.5 = the change RAISES s (a shortcut), near 1 = the change is detected.
Writes OUT/shortcuts.json and OUT/shortcuts.md (default OUT = WORKDIR/eval).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from semsad_jax.data import DataSets
from semsad_jax.evaluation.detector import Detector
from semsad_jax.method.metrics import ood_metrics


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _blur(images: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from PIL import Image, ImageFilter

    out = [Image.fromarray(im).filter(ImageFilter.GaussianBlur(sigma)) for im in images]
    return np.stack([np.asarray(o) for o in out])


def _quadrants(images: np.ndarray) -> np.ndarray:
    h, w = images.shape[1] // 2, images.shape[2] // 2
    q = [images[:, :h, :w], images[:, :h, w:], images[:, h:, :w], images[:, h:, w:]]
    top = np.concatenate([q[3], q[2]], axis=2)
    bottom = np.concatenate([q[1], q[0]], axis=2)
    return np.concatenate([top, bottom], axis=1)


def changes(x: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """name -> a changed copy of the uint8 images ``x`` [N, H, W, 3]."""
    xf = x.astype(np.float32)
    gray = xf @ np.array([0.299, 0.587, 0.114], np.float32)
    mean = xf.mean(axis=(1, 2), keepdims=True)
    return {
        "grayscale": _u8(np.repeat(gray[..., None], 3, axis=-1)),
        "blur sigma 1.5": _blur(x),
        "contrast x0.5": _u8(mean + 0.5 * (xf - mean)),
        "brightness x0.5": _u8(0.5 * xf),
        "channels permuted (BRG)": x[..., [2, 0, 1]],
        "rotated 90": np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))),
        "quadrants permuted": _quadrants(x),
        "flat (mean colour)": _u8(np.broadcast_to(mean, xf.shape)),
        "uniform noise": rng.integers(0, 256, x.shape, dtype=np.uint8),
    }


def analyse(detector: Detector, x: np.ndarray, far: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Rows {name: {"mean_s", "auroc_vs_in"}} (see the module docstring)."""
    rng = np.random.default_rng(seed)
    base, _, nn = detector.score_with_neighbours(x)
    bank = detector.bank.images
    rows = {
        "pair s(x, x)": detector.pair_scores(x, x),
        "pair s(nn(x), x) = score(x)": base,
        "pair s(random train, x)": detector.pair_scores(
            bank[rng.integers(0, len(bank), len(x))], x
        ),
    }
    rows.update({f"changed: {k}": detector.score(v) for k, v in changes(x, rng).items()})
    rows.update({f"far OOD: {k}": detector.score(v) for k, v in far.items()})
    out = {}
    for name, scores in rows.items():
        auroc = None if name.startswith("pair") else ood_metrics(base, scores)["auroc"]
        out[name] = {"mean_s": float(np.mean(scores)), "auroc_vs_in": auroc}
    out["_nn_similarity_mean"] = float(np.mean(nn.similarities[:, 0]))
    return out


def markdown(rows: dict, workdir: str) -> str:
    lines = [
        f"What drives s in `{workdir}` (mean SemSAD score; AUROC of the in-distribution test images "
        "against the row's images, in-distribution positive: < 50 means the row scores HIGHER)",
        "",
        "| images or pair | mean s | AUROC in vs row |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        if name.startswith("_"):
            continue
        auroc = "-" if row["auroc_vs_in"] is None else f"{100 * row['auroc_vs_in']:.1f}"
        lines.append(f"| {name} | {row['mean_s']:.2f} | {auroc} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--images", default=None, help="in-distribution images (default data.test)")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    detector = Detector.restore(args.workdir)
    config = detector.config
    sets = DataSets(config.data, int(config.seed))
    x = sets.load(args.images or config.data.test).images[: args.limit]
    far = {
        name: sets.load(spec).images[: args.limit]
        for name, spec in dict(config.eval.ood).items()
        if name.startswith("far_")
    }
    rows = analyse(detector, x, far)
    out = args.out or os.path.join(args.workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "shortcuts.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = markdown(rows, args.workdir)
    with open(os.path.join(out, "shortcuts.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    main()
