"""Data-parallel scaling across processes on one machine: 2 processes x 1 device against
1 process x 2 devices, the same global batch and the same encoder step.

    python -m benchmarks scaling --out=runs/bench/scaling.json

Each configuration runs this script's ``--worker`` (the ``encoder_train`` row of
``throughput.py`` at the ``cpu`` preset: batch 256, width 16, 16 px, float32) once per process;
the two processes of the first join JAX's distributed runtime over loopback (gloo collectives, the
launch of tests/test_multiprocess.py), the second is one process with two fake CPU devices
(XLA's in-process collectives). Configurations alternate ``--rounds`` times; the table gives
views/s (process 0's median) and the ratio. Numbers, not a test: on one machine a second process
only adds TCP collectives and a second copy of the runtime, so the ratio says what crossing a
process boundary costs, not what a second host gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from benchmarks.timing import machine_info, markdown_table, write_json

MARK = "SCALING_RESULT "
CONFIGS = {"2 processes x 1 device": (2, 1), "1 process x 2 devices": (1, 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", action="store_true", help="(internal) run one process's timing")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two configurations")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per worker")
    p.add_argument("--calls", type=int, default=2, help="steps per timed round")
    p.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    from semsad_jax import parallel

    parallel.initialize_distributed()  # from the launch variables; one process: nothing

    import jax
    import numpy as np

    from benchmarks.timings import throughput
    from benchmarks.timings.jax_rows import bench_encoder

    sizes = throughput.resolve_sizes(
        throughput.parse_args(
            [f"--preset={args.preset}", f"--repeats={args.repeats}", f"--calls={args.calls}"]
        )
    )
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, (4 * sizes.batch, sizes.image_size, sizes.image_size, 3), np.uint8
    )
    row = bench_encoder(sizes, "float32", images, mesh, "encoder")
    row.update(processes=jax.process_count(), devices=jax.device_count())
    if jax.process_index() == 0:
        print(MARK + json.dumps(row), flush=True)


def launch(args: argparse.Namespace, processes: int, devices: int, log_dir: str) -> dict:
    flags = [
        "--worker",
        f"--preset={args.preset}",
        f"--repeats={args.repeats}",
        f"--calls={args.calls}",
    ]
    from tests.launch import Launch  # the launch of tests/test_multiprocess.py

    run = Launch(
        flags,
        count=processes,
        devices=devices,
        env=dict(os.environ),
        log_dir=log_dir,
        tag=f"{processes}x{devices}",
        module="benchmarks.timings.scaling",  # run from the repository root (cwd): no path set-up
        xla_flags="",
    )
    codes = run.wait(args.timeout)
    lines = [x for x in run.output(0).splitlines() if x.startswith(MARK)]
    if codes != [0] * processes or not lines:
        raise SystemExit(f"{processes} x {devices} failed ({codes}):\n{run.output(0)[-3000:]}")
    return json.loads(lines[-1][len(MARK) :])


def run(args: argparse.Namespace) -> dict:
    log_dir = tempfile.mkdtemp(prefix="semsad-scaling-")
    rows: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(max(args.rounds, 1)):
        for name, (processes, devices) in CONFIGS.items():
            rows[name].append(launch(args, processes, devices, log_dir))
    table = [
        {
            "configuration": name,
            "views_per_s": round(statistics.median(r["items_per_s"] for r in rs), 1),
            "runs": [r["items_per_s"] for r in rs],
            "median_ms": round(statistics.median(r["median_ms"] for r in rs), 1),
        }
        for name, rs in rows.items()
    ]
    two, one = table[0]["views_per_s"], table[1]["views_per_s"]
    result = {
        "machine": machine_info(),
        "preset": args.preset,
        "rows": table,
        "ratio_2x1_over_1x2": round(two / one, 3),
        "logs": log_dir,
    }
    columns = [
        ("configuration", "configuration"),
        ("views_per_s", "views/s"),
        ("median_ms", "ms/step"),
        ("runs", "views/s per run"),
    ]
    print(markdown_table(table, columns))
    print(f"\n2 processes x 1 device / 1 process x 2 devices: {result['ratio_2x1_over_1x2']:.2f}")
    write_json(args.out, result)
    return result


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return None
    return run(args)


if __name__ == "__main__":
    main()
