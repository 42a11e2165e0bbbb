"""Encoder recipes at equal compute: kNN accuracy of the encoder alone on a validation protocol.

    python -m benchmarks encoder_recipes --out=runs/enc/adam --steps=450
    python -m benchmarks encoder_recipes --out=runs/enc/sgd --steps=450 \\
        --set encoder.optimizer=sgd --set encoder.learning_rate=0.06 \\
        --set encoder.schedule=cosine --set encoder.weight_decay=5e-4
    python -m benchmarks encoder_recipes --out=runs/enc/all --steps=450 --train-limit=0
    python -m benchmarks encoder_recipes --out=runs/enc2/d10_all_900 --steps=900 --train-limit=0 \
        --set encoder.depth=10 --set encoder.augment=encoder_mild --set encoder.temperature=0.1

Trains only the encoder of ``--protocol`` (default the class split) on its VALIDATION split
(:func:`cifar10_quality.protocols`: held-out CIFAR-10 training images, never the test split) with the
budget's sizes and recipe plus ``--set`` overrides, for ``--steps`` optimiser steps (the epochs
follow from the training-set size: equal steps = equal compute whatever the data), and reports
the kNN accuracy of its features (h, and the backbone's: ``knn_accuracy_penultimate``) on the
held-out images of the protocol's classes (k = 20, cosine, temperature 0.1; labels only for this
measurement), the raw-pixel kNN floor, the wall
minutes and the process's CPU minutes (the machine is shared: CPU time is the steadier measure of
compute). Writes ``OUT/result.json``; a rerun reuses the finished encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from benchmarks.experiments import cifar10_quality as quality
from benchmarks.timing import machine_info, write_json
from semsad_jax.configs.cifar10_shared import ARCHIVE


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="workdir (OUT/encoder) and OUT/result.json")
    p.add_argument("--budget", default="cpu", choices=sorted(quality.BUDGETS))
    p.add_argument("--protocol", default="class_split")
    p.add_argument("--steps", type=int, default=0, help="optimiser steps (0 = the budget's epochs)")
    p.add_argument("--train-limit", type=int, default=None, help="training images (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--archive", default=ARCHIVE)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
    args = p.parse_args(argv)
    budget = quality.BUDGETS[args.budget]
    if args.train_limit is not None:
        budget = quality.dataclasses.replace(
            budget, train_limit=args.train_limit, one_class_train_limit=args.train_limit
        )
    (protocol,) = quality.protocols(budget, args.archive, [args.protocol]).values()
    extra = [quality.parse_override(item) for item in args.set]
    config = quality.make_config(budget, protocol, args.seed, "batch", extra)
    from semsad_jax.data import DataSets
    from semsad_jax.run import run

    if args.steps:
        num_train = len(DataSets(config.data, config.seed).train())
        per_epoch = max(num_train // int(config.encoder.batch_size), 1)
        config.encoder.epochs = max(1, round(args.steps / per_epoch))
    t0, c0 = time.time(), cpu_seconds()
    summary = run(config, args.out, "encoder")["encoder"]
    result = {
        "protocol": args.protocol,
        "split": "validation",
        "budget": args.budget,
        "overrides": [list(kv) for kv in (*budget.overrides, *extra)],
        "num_train": summary.get("num_train"),
        "epochs": summary.get("epochs"),
        "steps": summary.get("total_steps"),
        "knn_accuracy": summary.get("knn_accuracy"),
        "knn_accuracy_penultimate": summary.get("knn_accuracy_penultimate"),
        "pixel_knn_accuracy": summary.get("pixel_knn_accuracy"),
        "train_minutes": summary.get("train_minutes"),
        "cpu_minutes_this_call": round((cpu_seconds() - c0) / 60, 2),
        "wall_minutes_this_call": round((time.time() - t0) / 60, 2),
        "machine": machine_info(),
    }
    write_json(os.path.join(args.out, "result.json"), result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    return result


if __name__ == "__main__":
    main()
