"""How semantic are the neighbourhoods S(x): the whole bank against the paper's random pool.

    python -m benchmarks neighbour_pool --workdir=runs/c10 [--pools=0,10000,2000] [--k=4]

Restores the workdir's feature bank (h of every training image) and, for each pool size (0 = the
whole bank; N = the paper's "4 nearest among N random examples", App. D.2), builds S(x) and reports
the fraction of neighbours that share x's class label and their mean cosine similarity to x. Labels
are only read here, to measure; training never sees them. Prints a markdown table and writes
OUT/neighbour_pool.json (default OUT = WORKDIR/eval).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from semsad_jax.method.neighbours import pooled_neighbourhoods
from semsad_jax.workdir.bank import load_bank


def measure(features: np.ndarray, labels: np.ndarray, pools: list[int], k: int, seed: int = 0):
    rows = []
    for pool in pools:
        t0 = time.time()
        nb = pooled_neighbourhoods(features, k, pool, seed, normalized=True)
        rows.append(
            {
                "pool": pool,
                "label_agreement": float(np.mean(labels[nb] == labels[:, None])),
                "mean_cosine": float(np.mean(np.sum(features[:, None, :] * features[nb], axis=-1))),
                "seconds": round(time.time() - t0, 2),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--pools", default="0,10000,2000,500")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    bank = load_bank(args.workdir)
    if (bank.labels < 0).any():
        raise SystemExit("the bank has no labels; label agreement needs a labelled training set")
    pools = [int(v) for v in args.pools.split(",")]
    rows = measure(bank.features, bank.labels, pools, args.k)
    print(f"S(x) of {len(bank)} training images, k={args.k} ({args.workdir})\n")
    print("| pool (0 = whole bank) | same class | mean cosine | seconds |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pool']} | {100 * r['label_agreement']:.1f}% | {r['mean_cosine']:.3f} | "
            f"{r['seconds']} |"
        )
    out = args.out or os.path.join(args.workdir, "eval")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "neighbour_pool.json"), "w") as f:
        json.dump({"num_images": len(bank), "k": args.k, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
