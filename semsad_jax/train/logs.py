"""Training logs: a one-line progress bar, and metrics as JSON lines (and TensorBoard) per stage.

Only process 0 writes or prints.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from semsad_jax.workdir.space import reporting_disk_full

log = logging.getLogger(__name__)

__all__ = ["MetricsWriter", "Progress"]


class Progress:
    """A one-line progress bar on stderr: step, epoch, loss, images/s, ETA (process 0 only)."""

    def __init__(self, name: str, total: int, start: int, enabled: bool = True):
        self.name, self.total, self.start = name, total, start
        self.enabled = enabled and jax.process_index() == 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()

    def update(self, step: int, metrics: dict, images_per_s: float) -> None:
        if not self.enabled:
            return
        done = step - self.start
        eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
        frac = step / max(self.total, 1)
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "gamma"))
        line = (
            f"{self.name} [{bar}] {step}/{self.total} {shown} "
            f"{images_per_s:,.0f} img/s ETA {_hms(eta)}"
        )
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
    """Appends metrics as JSON lines to ``path`` and, optionally, to TensorBoard (needs tensorflow)."""

    def __init__(self, path: str, tensorboard: bool = False):
        self.path = path
        self.enabled = jax.process_index() == 0
        self._tb = None
        if tensorboard and self.enabled:
            try:
                import tensorflow as tf

                self._tb = tf.summary.create_file_writer(os.path.join(os.path.dirname(path), "tb"))
            except ImportError:
                log.warning(
                    "tensorboard requested but tensorflow is not installed; JSON lines only"
                )

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        line = json.dumps(record) + "\n"
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        with reporting_disk_full(self.path, len(line), "a metrics line"):
            try:
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError:  # never leave half a line behind
                with open(self.path, "r+") as f:
                    f.truncate(size)
                raise
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=int(step)):
                for k, v in metrics.items():
                    if isinstance(v, int | float | np.floating | np.integer):
                        tf.summary.scalar(k, float(v))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray | jax.Array):
        v = np.asarray(v)
        return v.item() if v.size == 1 else v.tolist()
    if isinstance(v, np.floating | np.integer):
        return v.item()
    return v
