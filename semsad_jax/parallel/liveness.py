"""Losing a process of a multi-process run, reported in one line by the processes that remain.

A process blocked in a collective usually learns at once that a peer is gone (gloo / NCCL fail and
:func:`parallel.launch.lost_peer` words it), but not always: a device thread may wait where the
failure never reaches it. JAX's own heartbeat then aborts every process with a multi-line fatal
error after ``SEMSAD_HEARTBEAT_TIMEOUT`` seconds. :class:`Liveness` gets there first: each process
stamps a counter under ``semsad/alive/<i>`` in the coordination service's key-value store every
second; when a peer's counter has not moved for ``stale_s`` (``parallel.launch`` passes
``LIVENESS_FRACTION`` = 0.6 of the heartbeat timeout) and the peer did not say it finished
(``semsad/done/<i>``, at a normal exit), the process prints ``error: lost process i ...`` and
leaves. Counters, not clocks: hosts need not agree on the time.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from typing import Any

ALIVE, DONE = "semsad/alive/", "semsad/done/"


class Liveness(threading.Thread):
    """Stamps this process alive and watches the others (a daemon thread).

    Args:
      client: the runtime's DistributedRuntimeClient; process_id / count: this process, how many.
      stale_s: a peer silent this long is lost; period_s: how often to stamp and look.
      leave: ``(message, code) -> NoReturn``, how to stop this process.
    """

    def __init__(
        self, client: Any, process_id: int, count: int, stale_s: float, leave, period_s: float = 1.0
    ):
        super().__init__(name="semsad-liveness", daemon=True)
        self.client, self.me, self.count = client, process_id, count
        self.stale_s, self.period_s, self._leave = stale_s, period_s, leave
        self._stop = threading.Event()

    def start(self) -> None:
        atexit.register(self.finish)  # after jax's own atexit shutdown, so it runs before it
        super().start()

    def run(self) -> None:
        seen: dict[int, tuple[str | None, float]] = {}
        stamp = 0
        while not self._stop.wait(self.period_s):
            stamp += 1
            try:
                self.client.key_value_set(f"{ALIVE}{self.me}", str(stamp), allow_overwrite=True)
                alive = dict(self.client.key_value_dir_get(ALIVE))
                done = dict(self.client.key_value_dir_get(DONE))
            except Exception:  # the runtime is shutting down, or the coordinator is gone (JAX
                return  # reports that itself, at once)
            now = time.monotonic()
            for peer in range(self.count):
                if peer == self.me or f"{DONE}{peer}" in done:
                    continue
                value = alive.get(f"{ALIVE}{peer}")
                if peer not in seen or seen[peer][0] != value:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self.stale_s and not self._stop.is_set():
                    self._leave(
                        f"error: lost process {peer} of this {self.count}-process run (silent for "
                        f"{self.stale_s:.0f} s); rerun every process with the same command to "
                        "resume from the last checkpoint.",
                        3,
                    )

    def finish(self) -> None:
        """A normal exit: stop watching and tell the others this process is done, not lost."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self.client.key_value_set(f"{DONE}{self.me}", "1", allow_overwrite=True)
