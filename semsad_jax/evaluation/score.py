"""``--mode=score``: score any images with a trained, evaluated workdir; one CSV row per image.

The threshold is the one ``--mode=eval`` stored (it keeps ``eval.tpr`` of the in-distribution test
images), so ``is_ood`` means the same as the evaluation's detection rates.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import jax

from semsad_jax.data.sets import DataSets
from semsad_jax.errors import SemsadError
from semsad_jax.evaluation.detector import Detector, bn_mode
from semsad_jax.workdir import layout
from semsad_jax.workdir.layout import Workdir, as_workdir

__all__ = ["score_images"]


def score_images(
    config: Any,
    workdir: str | Workdir,
    images_spec: str,
    *,
    mesh: Any = None,
    sets: DataSets | None = None,
    detector: str = "semsad",
    out_dir: str | None = None,
) -> dict:
    """``--mode=score``: scores the images of ``images_spec``; writes WORKDIR/score/scores.csv
    (``out_dir``/scores.csv when given).

    CSV columns: source (the spec), id (file path or index, ``ImageSet.ids``), score (of
    ``detector``: semsad, knn, mahalanobis or pixels_knn), nearest_index (into the training bank,
    by h), nearest_similarity, is_ood (score below that detector's threshold stored by
    --mode=eval), detector. Returns {"csv", "num_images", "num_ood", "threshold", "bn_mode",
    "detector"}.
    """
    wd = as_workdir(workdir)
    wd.check_trained(layout.trained_stages(config))
    if wd.threshold("semsad") is None:
        raise SemsadError(
            f"no evaluation in {wd.path}; run --mode=eval first (it stores the threshold)."
        )
    det = Detector.from_workdir(config, wd, mesh=mesh)
    threshold = det.threshold_of(detector)
    images = (sets or DataSets(config.data, int(config.seed))).load(images_spec)
    scored = det.scores(images.images, detectors=(detector,))
    scores = scored[detector]
    flags = scores < threshold
    path = os.path.join(out_dir, "scores.csv") if out_dir else wd.scores_csv
    summary = {
        "csv": path,
        "num_images": len(images),
        "num_ood": int(flags.sum()),
        "threshold": threshold,
        "bn_mode": bn_mode(config),
        "detector": detector,
    }
    if jax.process_index() != 0:
        return summary
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["source", "id", "score", "nearest_index", "nearest_similarity", "is_ood", "detector"]
        )
        for i, image_id in enumerate(images.ids):
            writer.writerow(
                [
                    images_spec,
                    image_id,
                    f"{scores[i]:.6g}",
                    int(scored["nn"][i]),
                    f"{scored['nn_similarity'][i]:.6g}",
                    int(flags[i]),
                    detector,
                ]
            )
    print(
        f"scored {len(images)} images with {detector} [bn_mode: {summary['bn_mode']}]: "
        f"{summary['num_ood']} flagged OOD at threshold {threshold:.6g}; wrote {path}"
    )
    return summary
