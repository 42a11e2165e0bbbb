"""One entry for every benchmark: ``python -m benchmarks NAME [ARGS]`` runs NAME's ``main(ARGS)``.

    python -m benchmarks --help                      # every benchmark, one line each
    python -m benchmarks throughput --help           # one benchmark's own flags
    python -m benchmarks cifar10_quality --budget=tiny --out=/tmp/q

Run from the repository root (``-m`` puts it on ``sys.path``). The old paths
(``python benchmarks/NAME.py ARGS``) still run: each is a shim that calls :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# NAME: (module under benchmarks/, what it measures). timings/: speed and memory; experiments/:
# detection quality and diagnostics; peer/: the PyTorch reference (imported by throughput --torch).
BENCHMARKS = {
    "throughput": (
        "timings.throughput",
        "images/s of the hot paths in f32 and bf16; --torch adds the PyTorch peer",
    ),
    "stages": ("timings.stages", "the encoder step stage by stage (--augment-ops: op by op)"),
    "conv_impl": (
        "timings.conv_impl",
        "every convolution of the ResNet as XLA's convolution and as a matmul; what auto picks",
    ),
    "conv_ops": (
        "timings.conv_ops",
        "each convolution's forward, input and weight gradient alone, in XLA and in PyTorch",
    ),
    "host_memory": (
        "timings.host_memory",
        "peak resident memory with data.placement=host on a memory-mapped set",
    ),
    "scaling": ("timings.scaling", "2 processes x 1 device against 1 process x 2 devices"),
    "cifar10_quality": (
        "experiments.cifar10_quality",
        "AUROC / FPR95 on CIFAR-10 (class split, one-class, far OOD) beside the floors",
    ),
    "encoder_recipes": (
        "experiments.encoder_recipes",
        "an encoder recipe at equal steps: kNN accuracy on a validation protocol, CPU minutes",
    ),
    "scaling_curve": (
        "experiments.scaling_curve",
        "AUROC and encoder kNN accuracy against training compute, fitted and extrapolated",
    ),
    "shortcuts": (
        "experiments.shortcuts",
        "what drives the score s on a trained workdir (controlled pairs, changed images)",
    ),
    "neighbour_pool": (
        "experiments.neighbour_pool",
        "how semantic the neighbourhoods S(x) are: the whole bank against a random pool",
    ),
}


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<16} {text}" for name, (_, text) in BENCHMARKS.items())
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"benchmarks:\n{listing}\n\nshell: bash benchmarks/gpu.sh OUTDIR (every GPU "
        "benchmark), bash benchmarks/fetch_wheels.sh (its wheels). See benchmarks/README.md.",
    )
    p.add_argument("name", metavar="NAME", choices=BENCHMARKS, help="the benchmark (below)")
    p.add_argument("args", nargs="*", default=[], metavar="ARGS", help="NAME's flags (NAME --help)")
    return p


def run(name: str, argv: list[str]):
    """``main(argv)`` of benchmark ``name``; returns what it returns."""
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[name][0]}")
    return module.main(argv)


def main(argv: list[str] | None = None):
    if argv is None:
        argv = sys.argv[1:]
        sys.argv[0] = f"python -m benchmarks {argv[0] if argv else ''}".strip()  # NAME's usage
    # only NAME is parsed here: everything after it, --help included, is NAME's own
    parser().parse_args(argv[:1])
    return run(argv[0], argv[1:])


if __name__ == "__main__":
    main()
