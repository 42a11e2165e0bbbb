"""Timing, result rows, tables and JSON output shared by every benchmark (timings/, experiments/,
peer/).

A benchmark is a callable that does one unit of work (a training step, one augmented batch, ...)
and returns something to block on. :func:`time_call` runs it ``warmup`` times untimed (compilation,
caches), then ``repeats`` timed rounds of ``calls`` calls each, blocking on the last result with
``jax.block_until_ready`` (or a user ``sync``), and reports the median seconds per call.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def _block(result: Any) -> None:
    import jax

    jax.block_until_ready(result)


@dataclasses.dataclass
class Timing:
    """Seconds per call: median, min, max over ``repeats`` rounds (each the mean of ``calls``).

    ``cpu_median_s``: median CPU seconds per call of this process (all its threads; not its child
    processes), which other load on a shared machine barely changes, unlike wall time.
    """

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    calls: int
    cpu_median_s: float = 0.0


def time_call(
    fn: Callable[[], Any],
    *,
    warmup: int = 2,
    repeats: int = 5,
    calls: int = 1,
    sync: Callable[[Any], None] | None = None,
) -> Timing:
    """Times ``fn()``: ``warmup`` untimed calls, then ``repeats`` rounds of ``calls`` calls.

    Each round ends by blocking on its last result (``sync``, default ``jax.block_until_ready``);
    since device work is asynchronous and in order, that waits for the whole round.
    """
    sync = sync or _block
    for _ in range(max(warmup, 0)):
        sync(fn())
    per_call, cpu_per_call = [], []
    for _ in range(max(repeats, 1)):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = None
        for _ in range(max(calls, 1)):
            result = fn()
        sync(result)
        per_call.append((time.perf_counter() - start) / max(calls, 1))
        cpu_per_call.append((time.process_time() - cpu_start) / max(calls, 1))
    return Timing(
        median_s=statistics.median(per_call),
        min_s=min(per_call),
        max_s=max(per_call),
        repeats=len(per_call),
        calls=max(calls, 1),
        cpu_median_s=statistics.median(cpu_per_call),
    )


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    repeats: int = 5,
    calls: int = 1,
    sync: Callable[[Any], None] | None = None,
) -> dict[str, Timing]:
    """:func:`time_call` of several callables whose timed rounds alternate (A, B, A, B, ...), so
    load that comes and goes on a shared machine hits them alike."""
    for fn in fns.values():
        time_call(fn, warmup=max(warmup - 1, 0), repeats=1, calls=1, sync=sync)
    rounds: dict[str, list[Timing]] = {name: [] for name in fns}
    for _ in range(max(repeats, 1)):
        for name, fn in fns.items():
            rounds[name].append(time_call(fn, warmup=0, repeats=1, calls=calls, sync=sync))
    return {
        name: Timing(
            median_s=statistics.median(t.median_s for t in ts),
            min_s=min(t.min_s for t in ts),
            max_s=max(t.max_s for t in ts),
            repeats=len(ts),
            calls=max(calls, 1),
            cpu_median_s=statistics.median(t.cpu_median_s for t in ts),
        )
        for name, ts in rounds.items()
    }


def row(
    bench: str,
    dtype: str,
    items: int,
    unit: str,
    timing: Timing,
    framework: str = "jax",
    **extra: Any,
) -> dict:
    """One result row: ``items`` processed per call, the timing, and items per second."""
    out = {
        "bench": bench,
        "framework": framework,
        "dtype": dtype,
        "unit": unit,
        "items_per_call": int(items),
        "median_ms": round(timing.median_s * 1e3, 3),
        "min_ms": round(timing.min_s * 1e3, 3),
        "max_ms": round(timing.max_s * 1e3, 3),
        "repeats": timing.repeats,
        "calls": timing.calls,
        "items_per_s": round(items / timing.median_s, 1) if timing.median_s > 0 else float("inf"),
        "cpu_ms": round(timing.cpu_median_s * 1e3, 3),
        "items_per_cpu_s": round(items / timing.cpu_median_s, 1)
        if timing.cpu_median_s > 0
        else None,
    }
    out.update(extra)
    return out


def xla_gflop(fn: Callable, *args: Any, **kwargs: Any) -> float | None:
    """GFLOP of one call ``fn(*args, **kwargs)`` of a jitted function (or a ``functools.partial``
    of one), from XLA's cost analysis of the lowered program; None where there is none.

    The LOWERED (whole-mesh) program, not the compiled one: the compiled program is one device's
    partition, so its count shrinks with the number of devices. Lowering a function already called
    with arguments of these shapes is a cache hit (nothing is traced or compiled again). XLA counts
    a loop's body once (whatever its trip count) and transcendentals (exp, log) apart from flops.
    """
    if isinstance(fn, functools.partial):
        fn, args, kwargs = fn.func, (*fn.args, *args), fn.keywords | kwargs
    try:
        cost = fn.lower(*args, **kwargs).cost_analysis()
    except Exception:  # a backend or JAX version without cost analysis: leave the column blank
        return None
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) / 1e9 if flops and flops > 0 else None


def with_flops(result: dict, gflop_per_call: float | None) -> dict:
    """``result`` (a :func:`row`) with ``gflop_per_call`` and ``gflop_per_s`` (= GFLOP per call x
    calls per second); both None when the count is unknown."""
    known = bool(gflop_per_call) and result["items_per_call"] > 0
    calls_per_s = result["items_per_s"] / result["items_per_call"] if known else 0.0
    result["gflop_per_call"] = significant(gflop_per_call) if known else None
    result["gflop_per_s"] = significant(gflop_per_call * calls_per_s) if known else None
    return result


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (for JSON and tables)."""
    return float(f"{value:.{digits}g}")


def machine_info() -> dict:
    """Where the numbers came from: host, CPU count, load, JAX devices and versions."""
    import jax

    info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
    }
    return info


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with ``columns`` = [(key, header)]; missing values are blank."""

    def fmt(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
        return str(value)

    lines = [
        "| " + " | ".join(h for _, h in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    """Writes ``payload`` as indented JSON to ``path`` ("-" = stdout; None = nowhere)."""
    if not path:
        return
    text = json.dumps(payload, indent=2, default=str)
    if path == "-":
        print(text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
