"""What the old script paths run: ``python benchmarks/NAME.py ARGS`` = ``python -m benchmarks NAME
ARGS``.

Run as a script, a file's own folder (benchmarks/) heads ``sys.path`` instead of the repository
root; this is the one place that puts the root there (``-m`` and pytest need no such step).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(name: str) -> None:
    """Runs benchmark ``name`` with this process's arguments, the repository root on sys.path."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks.__main__ import run as run_benchmark

    run_benchmark(name, sys.argv[1:])
