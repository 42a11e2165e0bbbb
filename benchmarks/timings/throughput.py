"""Throughput of semsad-jax's hot paths on whatever device JAX sees, with optional peers.

    python -m benchmarks throughput --preset=cpu --out=runs/bench/throughput.json
    python -m benchmarks throughput --preset=gpu --torch --out=$OUT/throughput.json

Rows (items per second, median over ``--repeats`` timed rounds after ``--warmup`` untimed calls,
each round blocked with ``jax.block_until_ready``), for each ``--dtypes`` entry:

- ``encoder_train``: the real encoder step (:func:`semsad_jax.train.encoder.make_train_step`): batch gather
  from the on-device set, two augmented views, forward/backward, Adam. Items = augmented views.
- ``encoder_step_no_aug``: the same step with the identity augmentation (the ``t_org`` preset).
- ``discriminator_train``: the real discriminator step (:mod:`benchmarks.timings.disc_step`).
  Items = pairs (B positive + B negative).
- ``augment``: ``augment_batch`` with the encoder preset alone. Items = images.
- ``encoder_train_device`` / ``encoder_train_host`` (``--benches=placement``): the encoder step
  with ``data.placement`` device (the set on every device) and host (each step's rows gathered on
  the host, prefetched), timed in alternating rounds; the ratio host / device is printed.
- ``feature_bank``: ``features.compute_features`` (inference, host to device included).
- ``knn_top4``: ``neighbors.top_k_cosine`` (k=4, exclude_self) of a random unit bank against
  itself; in float32 also ``knn_top4_vs_sklearn``: ours and scikit-learn's brute-force cosine
  NearestNeighbors on the first ``--sklearn-bank`` rows, with the fraction of identical rows.
- ``--torch``: the PyTorch peers (:mod:`benchmarks.peer.torch_peer`, ``--torch-benches``): the
  authors' encoder step (``dataloader``, ``device_aug``, ``step``, ``augment``), our
  discriminator step (``disc``: row ``discriminator_train``, on fixed pairs made once on the
  device, so it times the step alone while ours also makes its pairs) and the feature bank
  (``bank``: row ``feature_bank``, the encoder in eval mode under ``torch.inference_mode``).

Ratios ours / peer (>1: ours faster) are printed after the table and stored in the JSON (written
after each dtype too, so a run cut short keeps its rows). The JAX rows live in :mod:`jax_rows`.
Synthetic uniform-random uint8 images are used (throughput does not depend on content).

Useful GFLOP/s: each JAX row's ``gflop_per_call`` is XLA's cost analysis of the jitted function it
times (whole mesh; :func:`benchmarks.timing.xla_gflop`) and ``gflop_per_s`` that times calls per
second. A peer row (torch, sklearn) takes the count of the JAX row it is compared with
(``COMPARISONS``; same dtype and items per call): the same network and the same work, so its
GFLOP/s compare like with like (ours also counts the few FLOPs of making views / pairs in the
step); a peer row whose JAX row was not run has none. Convolutions computed as patches @ kernel
(``--conv-impl=matmul``, and ``auto`` on one CPU device) count their zero padding too, XLA's
convolutions do not. ``matmul_peak_gflop_s``: a jitted float32 ``[n, n] @ [n, n]`` per device (``--peak-size``;
``matmul_peak`` holds every dtype timed) on this machine; ``peak_fraction`` = a row's GFLOP/s over
the peak of its dtype (printed as ``% of peak``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np

from benchmarks.timing import machine_info, markdown_table, significant, with_flops, write_json
from benchmarks.timings.jax_rows import (
    bench_augment,
    bench_bank,
    bench_discriminator,
    bench_encoder,
    bench_knn,
    bench_placement,
    encoder_config,
    matmul_peak,
    random_bank,
    timing_kwargs,
)

PRESETS = {
    "cpu": dict(
        batch=256,
        width=16,
        image_size=16,
        depth=18,
        disc_batch=64,
        disc_width=16,
        disc_depth=18,
        aug_batch=1024,
        bank_images=2048,
        bank_size=10000,
        warmup=1,
        repeats=3,
        calls=1,
        peak_size=2048,
    ),
    "gpu": dict(
        batch=2048,
        width=64,
        image_size=32,
        depth=18,
        disc_batch=128,
        disc_width=64,
        disc_depth=34,
        aug_batch=4096,
        bank_images=50000,
        bank_size=50000,
        warmup=2,
        repeats=5,
        calls=3,
        peak_size=8192,
    ),
    "tiny": dict(
        batch=16,
        width=4,
        image_size=8,
        depth=18,
        disc_batch=8,
        disc_width=4,
        disc_depth=18,
        aug_batch=16,
        bank_images=64,
        bank_size=256,
        warmup=1,
        repeats=1,
        calls=1,
        peak_size=512,
    ),
}
ALL_BENCHES = (
    "encoder",
    "encoder_noaug",
    "placement",
    "discriminator",
    "augment",
    "bank",
    "knn",
)
TORCH_BENCHES = ("dataloader", "device_aug", "step", "augment", "disc", "bank")
COLUMNS = [
    ("bench", "bench"),
    ("framework", "framework"),
    ("dtype", "dtype"),
    ("unit", "unit"),
    ("items_per_call", "per call"),
    ("median_ms", "median ms"),
    ("items_per_s", "items/s"),
    ("items_per_cpu_s", "items/CPU-s"),
    ("gflop_per_call", "GFLOP/call"),
    ("gflop_per_s", "GFLOP/s"),
    ("peak_percent", "% of peak"),  # 100 x the row's peak_fraction (the table shows percent)
]
# (ratio name, our bench, peer framework, peer bench, compare same dtype)
COMPARISONS = [
    ("step alone (no augmentation)", "encoder_step_no_aug", "torch", "encoder_step_no_aug"),
    ("end to end vs authors' DataLoader", "encoder_train", "torch", "encoder_train_dataloader"),
    ("end to end vs torch on-device aug", "encoder_train", "torch", "encoder_train_device_aug"),
    ("top-4 search vs sklearn brute", "knn_top4_vs_sklearn", "sklearn", "knn_top4_vs_sklearn"),
    ("data.placement host / device", "encoder_train_host", "jax", "encoder_train_device"),
    ("discriminator step", "discriminator_train", "torch", "discriminator_train"),
    ("feature bank", "feature_bank", "torch", "feature_bank"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--preset",
        choices=("auto", *PRESETS),
        default="auto",
        help="sizes: auto = gpu when JAX sees a GPU/TPU, else cpu",
    )
    for name in (
        "batch",
        "width",
        "image_size",
        "depth",
        "disc_batch",
        "disc_width",
        "disc_depth",
        "aug_batch",
        "bank_images",
        "bank_size",
        "warmup",
        "repeats",
        "calls",
        "peak_size",
    ):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (0 = all)")
    p.add_argument("--benches", default=",".join(ALL_BENCHES))
    p.add_argument("--head", default="linear", help="encoder head (authors: linear)")
    p.add_argument("--disc-norm", default="batch", help="discriminator norm (batch: one pass)")
    p.add_argument(
        "--conv-impl", default="auto", help="auto, xla or matmul (models.Conv; encoder and disc.)"
    )
    p.add_argument("--torch", action="store_true", help="add the PyTorch peer rows")
    p.add_argument("--torch-dtypes", default="float32")
    p.add_argument("--torch-workers", type=int, default=None, help="DataLoader workers")
    p.add_argument(
        "--torch-benches",
        default=",".join(TORCH_BENCHES),
        help=f"comma-separated, of {', '.join(TORCH_BENCHES)}",
    )
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--sklearn-bank", type=int, default=10000, help="bank rows for the sklearn pair")
    p.add_argument("--out", default=None, help="JSON output path ('-' = stdout)")
    p.add_argument("--markdown", default=None, help="also write the table to this .md file")
    return p.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> argparse.Namespace:
    import jax

    preset = args.preset
    if preset == "auto":
        preset = "cpu" if jax.default_backend() == "cpu" else "gpu"
    for key, value in PRESETS[preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.preset = preset
    return args


def comparisons(rows: list[dict]) -> list[dict]:
    """ours / peer items-per-second ratios for every (comparison, dtype) present in ``rows``.

    ``ratio`` compares wall-clock rates; ``ratio_cpu`` items per CPU-second of this process
    (steadier on a loaded machine; left out where the peer also burns CPU in worker processes).
    """
    index = {(r["framework"], r["bench"], r["dtype"]): r for r in rows}
    out = []
    for name, ours, peer_fw, peer in COMPARISONS:
        for (fw, bench, dtype), r in index.items():
            if fw != "jax" or bench != ours or (peer_fw, peer, dtype) not in index:
                continue
            theirs = index[(peer_fw, peer, dtype)]
            out.append(
                {
                    "comparison": name,
                    "dtype": dtype,
                    "ours_per_s": r["items_per_s"],
                    "peer_per_s": theirs["items_per_s"],
                    "ratio": round(r["items_per_s"] / theirs["items_per_s"], 3),
                    "ratio_cpu": None
                    if "workers" in theirs or not theirs.get("items_per_cpu_s")
                    else round(r["items_per_cpu_s"] / theirs["items_per_cpu_s"], 3),
                }
            )
    return out


def add_flop_rates(rows: list[dict], peaks: dict[str, dict]) -> None:
    """Fills in, in place: a peer row's ``gflop_per_call`` / ``gflop_per_s`` from the JAX row it is
    compared with (same dtype, same items per call), and every counted row's ``peak_fraction``
    (GFLOP/s over the matmul peak of its dtype, else of float32)."""
    index = {(r["framework"], r["bench"], r["dtype"]): r for r in rows}
    for _, ours, peer_fw, peer in COMPARISONS:
        for (fw, bench, dtype), r in index.items():
            theirs = index.get((peer_fw, peer, dtype))
            if fw != "jax" or bench != ours or theirs is None or theirs.get("gflop_per_call"):
                continue
            if r.get("gflop_per_call") and r["items_per_call"] == theirs["items_per_call"]:
                with_flops(theirs, r["gflop_per_call"])
    for r in rows:
        peak = peaks.get(r["dtype"], peaks.get("float32", {})).get("gflop_per_s")
        if r.get("gflop_per_s") and peak:
            r["peak_fraction"] = significant(r["gflop_per_s"] / peak, 3)


def run(args: argparse.Namespace) -> dict:
    import jax

    from semsad_jax import parallel

    args = resolve_sizes(args)
    if args.torch and importlib.util.find_spec("torch") is None:
        raise SystemExit("--torch needs PyTorch; pip install torch (a CPU build is fine)")
    mesh = parallel.make_mesh(jax.devices()[: args.devices] if args.devices else None)
    benches = [b for b in args.benches.split(",") if b]
    unknown = sorted(set(benches) - set(ALL_BENCHES))
    if unknown:
        raise SystemExit(f"unknown --benches {unknown}; choose from {', '.join(ALL_BENCHES)}")
    torch_benches = [b for b in args.torch_benches.split(",") if b]
    unknown = sorted(set(torch_benches) - set(TORCH_BENCHES))
    if args.torch and unknown:
        raise SystemExit(
            f"unknown --torch-benches {unknown}; choose from {', '.join(TORCH_BENCHES)}"
        )
    dtypes = [d for d in args.dtypes.split(",") if d]
    torch_dtypes = [d for d in args.torch_dtypes.split(",") if d] if args.torch else []
    peak_dtypes = dict.fromkeys(["float32", *dtypes, *torch_dtypes])  # ordered, unique
    peaks = {d: matmul_peak(mesh, d, args.peak_size) for d in peak_dtypes}
    rng = np.random.default_rng(0)
    num_images = max(4 * args.batch, 4 * args.disc_batch, 256)
    images = rng.integers(0, 256, (num_images, args.image_size, args.image_size, 3), np.uint8)
    bank = random_bank(args.bank_size)
    rows: list[dict] = []
    t0 = time.time()
    for dtype in dtypes:
        done = len(rows)
        if "encoder" in benches:
            rows.append(bench_encoder(args, dtype, images, mesh, "encoder"))
        if "encoder_noaug" in benches:
            rows.append(bench_encoder(args, dtype, images, mesh, "t_org"))
        if "placement" in benches:
            rows.extend(bench_placement(args, dtype, images, mesh))
        if "discriminator" in benches:
            rows.append(bench_discriminator(args, dtype, images, mesh))
        if "augment" in benches:
            rows.append(bench_augment(args, dtype, images, mesh))
        if "bank" in benches:
            rows.append(bench_bank(args, dtype, images, mesh))
        if "knn" in benches:
            rows.extend(bench_knn(args, dtype, bank, mesh, not args.no_sklearn))
        add_flop_rates(rows, peaks)
        _progress(rows[done:])
        write_json(args.out, _result(args, mesh, rows, t0, peaks))  # partial, for a time limit
    if args.torch:
        from benchmarks.peer import torch_peer

        workers = torch_peer.default_workers() if args.torch_workers is None else args.torch_workers
        disc = encoder_config(args, "float32").discriminator  # what our discriminator row runs
        rows.extend(
            torch_peer.bench_torch(
                images,
                batch=args.batch,
                width=args.width,
                dtypes=torch_dtypes,
                workers=workers,
                timing=timing_kwargs(args),
                benches=tuple(torch_benches),
                threads=args.torch_threads,
                disc=torch_peer.DiscSettings.from_section(disc),
                bank_images=args.bank_images,
                bank_batch=int(disc.feature_batch_size),
            )
        )
        add_flop_rates(rows, peaks)
    result = _result(args, mesh, rows, t0, peaks)
    report(result, args)
    return result


def _result(
    args: argparse.Namespace, mesh, rows: list[dict], t0: float, peaks: dict[str, dict]
) -> dict:
    return {
        "machine": machine_info(),
        "num_devices": mesh.devices.size,
        "sizes": {k: getattr(args, k) for k in PRESETS["cpu"]} | {"preset": args.preset},
        "rows": rows,
        "comparisons": comparisons(rows),
        "seconds": round(time.time() - t0, 1),
        "matmul_peak_gflop_s": peaks.get("float32", {}).get("gflop_per_s"),
        "matmul_peak": peaks,
    }


def _progress(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"  {r['framework']:7s} {r['bench']:24s} {r['dtype']:9s} {r['items_per_s']:>12,.1f} "
            f"{r['unit']}/s",
            file=sys.stderr,
        )


def report(result: dict, args: argparse.Namespace) -> None:
    m = result["machine"]
    peaks = ", ".join(
        f"{p['dtype']} {p['gflop_per_s']:,.1f} GFLOP/s" for p in result["matmul_peak"].values()
    )
    first = next(iter(result["matmul_peak"].values()), None)
    shape = f" ({first['size']}^3 per device, {first['devices']} devices)" if first else ""
    table_rows = [
        r | {"peak_percent": None if r.get("peak_fraction") is None else 100 * r["peak_fraction"]}
        for r in result["rows"]
    ]
    text = [
        f"# Throughput on {m['backend']} ({', '.join(sorted(set(m['devices'])))}), "
        f"{m['cpu_count']} CPUs, load {m['load_avg_1m']}, preset {args.preset}",
        "",
        f"matmul peak{shape}: {peaks}",
        "",
        markdown_table(table_rows, COLUMNS),
    ]
    if result["comparisons"]:
        text += [
            "",
            "ours / peer (items/s; > 1 = ours faster):",
            "",
            markdown_table(
                result["comparisons"],
                [
                    ("comparison", "comparison"),
                    ("dtype", "dtype"),
                    ("ours_per_s", "ours/s"),
                    ("peer_per_s", "peer/s"),
                    ("ratio", "ratio"),
                    ("ratio_cpu", "ratio per CPU-s"),
                ],
            ),
        ]
    table = "\n".join(text)
    print(table)
    write_json(args.out, result)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
