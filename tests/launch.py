"""Launching ``main.py`` (or any script or module) as several processes on this machine (loopback),
as on several hosts: the test helper of tests/test_multiprocess.py.

Each process gets the three launch variables (``JAX_COORDINATOR_ADDRESS`` on 127.0.0.1 and a free
port, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) and its own fake CPU devices. Processes start in
their own session, so :meth:`Launch.kill_all` ends each one with its children; :meth:`Launch.wait`
never waits past its deadline. The scaling benchmark (benchmarks/timings/scaling.py) times the very
launch that test checks, so it imports this module (``tests.launch``) rather than keep its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAST_COMPILE = "--xla_backend_optimization_level=0"  # halves the tests' compile times


def process_env(
    base: dict,
    *,
    devices: int,
    count: int = 1,
    process_id: int = 0,
    port: int = 0,
    xla_flags: str = FAST_COMPILE,
):
    """``base`` with ``devices`` fake CPU devices (plus ``xla_flags``) and, for ``count > 1``, the
    launch variables."""
    env = {k: v for k, v in base.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PRO"))}
    env.pop("JAX_PROCESS_ID", None)
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {xla_flags}".strip(),
    )
    if count > 1:
        env.update(
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES=str(count),
            JAX_PROCESS_ID=str(process_id),
        )
    return env


class Launch:
    """``main.py ARGS`` started as ``count`` processes of ``devices`` CPU devices each.

    Args:
      args: the script's flags (every process the same, unless ``per_process`` changes them).
      script: the script to run (default: main.py); module: run ``python -m module`` instead;
        xla_flags: XLA flags besides the device count.
      log_dir: where ``p<i>.log`` (stdout and stderr of process i) goes.
      env: the base environment; ``env_for`` may change it per process (``i -> {name: value}``).
    """

    def __init__(
        self,
        args,
        *,
        count: int,
        devices: int,
        env: dict,
        log_dir: str,
        tag: str = "run",
        env_for=None,
        per_process=None,
        script: str = os.path.join(ROOT, "main.py"),
        module: str | None = None,
        xla_flags: str = FAST_COMPILE,
    ):
        port = free_port()
        self.logs = [os.path.join(log_dir, f"{tag}-p{i}.log") for i in range(count)]
        self.procs: list[subprocess.Popen] = []
        self.started = time.time()
        for i in range(count):
            child = process_env(
                env, devices=devices, count=count, process_id=i, port=port, xla_flags=xla_flags
            )
            child.update((env_for or (lambda i: {}))(i))
            cmd = [sys.executable, *(("-m", module) if module else (script,)), *args]
            cmd += list((per_process or (lambda i: []))(i))
            with open(self.logs[i], "w") as log:
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        cwd=ROOT,
                        env=child,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def output(self, i: int) -> str:
        with open(self.logs[i]) as f:
            return f.read()

    def wait(self, timeout: float) -> list[int | None]:
        """Every process's exit code; those still running after ``timeout`` s are killed (None)."""
        deadline = time.time() + timeout
        codes: list[int | None] = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(deadline - time.time(), 0.01)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        self.kill_all()
        return codes

    def kill(self, i: int) -> None:
        """SIGKILL process i (and anything it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[i].pid, signal.SIGKILL)

    def kill_all(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.kill(i)
                proc.wait(timeout=30)
