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
from semsad_jax.workdir.layout import Workdir, as_workdir

__all__ = ["score_images"]


def score_images(
    config: Any,
    workdir: str | Workdir,
    images_spec: str,
    *,
    mesh: Any = None,
    sets: DataSets | None = None,
) -> dict:
    """``--mode=score``: scores the images of ``images_spec``; writes WORKDIR/score/scores.csv.

    CSV columns: source (the spec), id (file path or index, ``ImageSet.ids``), score, nearest_index
    (into the training bank), nearest_similarity, is_ood (score below the semsad threshold stored
    by --mode=eval). Returns {"csv", "num_images", "num_ood", "threshold", "bn_mode"}.
    """
    wd = as_workdir(workdir)
    wd.check_trained()
    threshold = wd.threshold("semsad")
    if threshold is None:
        raise SemsadError(
            f"no evaluation in {wd.path}; run --mode=eval first (it stores the threshold)."
        )
    detector = Detector.from_workdir(config, wd, mesh=mesh)
    images = (sets or DataSets(config.data, int(config.seed))).load(images_spec)
    scores, _, nn = detector.score_with_neighbours(images.images)
    flags = scores < threshold
    path = wd.scores_csv
    summary = {
        "csv": path,
        "num_images": len(images),
        "num_ood": int(flags.sum()),
        "threshold": threshold,
        "bn_mode": bn_mode(config),
    }
    if jax.process_index() != 0:
        return summary
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "id", "score", "nearest_index", "nearest_similarity", "is_ood"])
        for i, image_id in enumerate(images.ids):
            writer.writerow(
                [
                    images_spec,
                    image_id,
                    f"{scores[i]:.6g}",
                    int(nn.indices[i, 0]),
                    f"{nn.similarities[i, 0]:.6g}",
                    int(flags[i]),
                ]
            )
    print(
        f"scored {len(images)} images [bn_mode: {summary['bn_mode']}]: {summary['num_ood']} "
        f"flagged OOD at threshold {threshold:.6g}; wrote {path}"
    )
    return summary
