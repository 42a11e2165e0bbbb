"""One writer per workdir: an exclusive ``flock`` on ``WORKDIR/.lock``."""

from __future__ import annotations

import fcntl
import os

from semsad_jax.errors import SemsadError

__all__ = ["WorkdirLock"]


class WorkdirLock:
    """An exclusive ``flock`` on ``WORKDIR/.lock`` held while a process writes to the workdir.

    The kernel releases it when the process dies (even on SIGKILL), so a stale lock never blocks.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = open(self.path).read().strip() or "another process"
            raise SemsadError(
                f"workdir {os.path.dirname(self.path)} is in use by {holder}; wait for it to finish "
                f"or use another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
