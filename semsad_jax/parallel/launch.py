"""Several processes, one run: JAX's distributed runtime, started from the environment.

A multi-process run is launched by starting the SAME command once per process with::

    JAX_COORDINATOR_ADDRESS=HOST:PORT   process 0's host and a free port (every process the same)
    JAX_NUM_PROCESSES=N                 how many processes (every process the same)
    JAX_PROCESS_ID=I                    0 .. N-1, a different one per process

or under a cluster that JAX detects itself (SLURM ``srun`` with several tasks, Open MPI ``mpirun``,
a Cloud TPU slice; ``SEMSAD_DISTRIBUTED=1`` forces the detection). jax 0.10 reads only the address
from the environment, so :func:`initialize_distributed` passes the count and the id itself (and
switches jax's cluster detection off, which would otherwise give each process one GPU under SLURM).

Timeouts (seconds, environment): ``SEMSAD_INIT_TIMEOUT`` (default 120) is how long a process waits
for all N to join before it stops with one line; ``SEMSAD_HEARTBEAT_TIMEOUT`` (default 30) is how
long the runtime waits for a silent process before it aborts the others (and, at 0.6 of it, when
the others report a lost process in one line: :mod:`semsad_jax.parallel.liveness`). On the CPU the
collectives run over gloo (TCP), and JAX's persistent compilation cache is switched off (XLA:CPU
executables read back from it lose the order of their collectives, which then mismatch across
processes).

After the runtime is up, :func:`check_same_launch` compares a hash of each process's resolved config
and flags, and the process count each was started with, so a process started differently is refused
with one line. A process that loses a peer (SIGKILL, a dead host) leaves through :func:`leave` with
``os._exit``: a normal exit would wait in the runtime's shutdown barrier for the dead peer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import NoReturn

import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from semsad_jax.errors import SemsadError
from semsad_jax.parallel.liveness import Liveness

log = logging.getLogger(__name__)

ADDRESS, COUNT, PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
INIT_TIMEOUT, HEARTBEAT_TIMEOUT = "SEMSAD_INIT_TIMEOUT", "SEMSAD_HEARTBEAT_TIMEOUT"
DEFAULT_INIT_TIMEOUT_S, DEFAULT_HEARTBEAT_TIMEOUT_S = 120, 30
_JAX_GRACE_S = 30  # jax's own (aborting) initialization timeout comes this much after ours
LIVENESS_FRACTION = 0.6  # a peer silent for this part of the heartbeat timeout is lost (liveness)
# Words in the first line of a JaxRuntimeError that mean "another process is gone".
_PEER_WORDS = ("gloo", "connection", "peer", "heartbeat", "unavailable", "socket", "barrier")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process was started.

    Attributes:
      kind: "single" (one process), "explicit" (the three JAX_* variables) or "cluster" (JAX
        detects the processes: SLURM, Open MPI, Cloud TPU or SEMSAD_DISTRIBUTED=1).
      num_processes: the count this process was started with (0 when the cluster detects it).
      process_id: this process's index (explicit launches).
      address: the coordinator address, when given.
      cluster: which cluster was detected (kind "cluster").
    """

    kind: str = "single"
    num_processes: int = 1
    process_id: int = 0
    address: str | None = None
    cluster: str | None = None


def _integer(name: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise SemsadError(
            f"{name}={text!r} must be an integer >= {minimum}; fix it on this process."
        )
    return value


def _cluster(env: Mapping[str, str]) -> str | None:
    """The cluster JAX can detect the processes of, or None."""
    count = lambda name: int(env.get(name, "0")) if env.get(name, "0").isdigit() else 0
    if env.get("SEMSAD_DISTRIBUTED") == "1":
        return "SEMSAD_DISTRIBUTED=1"
    if env.get("SLURM_JOB_ID") and env.get("SLURM_STEP_NODELIST") and count("SLURM_NTASKS") > 1:
        return "SLURM"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI"
    if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU"
    return None


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch:
    """Reads the launch variables (see the module doc); one-line SemsadError for a bad combination."""
    env = os.environ if env is None else env
    address = env.get(ADDRESS, "").strip() or None
    count_text, id_text = env.get(COUNT), env.get(PROCESS_ID)
    every = f"set {COUNT}=N, {PROCESS_ID}=0..N-1 and {ADDRESS}=HOST:PORT on every process"
    if count_text is None:
        if id_text is not None:
            raise SemsadError(f"{PROCESS_ID} is set but {COUNT} is not; {every}.")
        cluster = _cluster(env)
        if cluster is not None:
            return Launch("cluster", 0, 0, address, cluster)
        if address is not None:
            raise SemsadError(
                f"{ADDRESS} is set but {COUNT} is not; {every} (or unset {ADDRESS} to run "
                "as one process)."
            )
        return Launch()
    count = _integer(COUNT, count_text, 1)
    if count == 1:
        return Launch()
    if address is None or ":" not in address:
        raise SemsadError(
            f"{COUNT}={count} needs {ADDRESS}=HOST:PORT (process 0's host and a free port); {every}."
        )
    if id_text is None:
        raise SemsadError(f"{COUNT}={count} needs {PROCESS_ID} (0..{count - 1}); {every}.")
    process_id = _integer(PROCESS_ID, id_text, 0)
    if process_id >= count:
        raise SemsadError(
            f"{PROCESS_ID}={process_id} is out of range for {COUNT}={count}; use 0..{count - 1}, "
            "each on one process."
        )
    return Launch("explicit", count, process_id, address)


def _seconds(env: Mapping[str, str], name: str, default: int) -> int:
    return _integer(name, env[name], 1) if name in env else default


def leave(message: str, code: int) -> NoReturn:
    """Prints ``message`` as one line on stderr and exits with ``code``.

    In a multi-process run the exit is ``os._exit`` after flushing: a normal exit would wait in the
    runtime's shutdown barrier for every other process, which may be gone or stuck in a collective.
    """
    print(" ".join(str(message).split()), file=sys.stderr, flush=True)
    if jax.distributed.is_initialized():
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _waited_too_long(launch: Launch, seconds: int) -> None:
    who = f"process {launch.process_id}" if launch.kind == "explicit" else "this process"
    count = launch.num_processes or "all"
    where = launch.address or f"the coordinator {launch.cluster} gave"
    leave(
        f"error: {who} waited {seconds} s for {count} processes to join at {where}; start every "
        f"process with the same command and {COUNT} ({PROCESS_ID} 0..N-1, each once), check that "
        f"the address is process 0's host and reachable, or raise {INIT_TIMEOUT}.",
        2,
    )


def initialize_distributed(env: Mapping[str, str] | None = None) -> Launch:
    """Starts JAX's distributed runtime when this process is one of several; returns the launch.

    Must run before anything else uses jax (the first computation starts the backend). Does
    nothing for a single process, or when the runtime is already up.
    """
    env = os.environ if env is None else env
    launch = launch_from_env(env)
    if launch.kind == "single" or jax.distributed.is_initialized():
        return launch
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in env:  # CPU collectives across processes
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    wait = _seconds(env, INIT_TIMEOUT, DEFAULT_INIT_TIMEOUT_S)
    heartbeat = _seconds(env, HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT_S)
    kwargs: dict = dict(
        initialization_timeout=wait + _JAX_GRACE_S, heartbeat_timeout_seconds=heartbeat
    )
    if launch.kind == "explicit":
        kwargs.update(
            coordinator_address=launch.address,
            num_processes=launch.num_processes,
            process_id=launch.process_id,
            cluster_detection_method="deactivate",
        )
    # jax's own timeout aborts the process from C++; this one says what to do, in one line.
    watchdog = threading.Timer(wait, _waited_too_long, (launch, wait))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise SemsadError(
            f"cannot start JAX's distributed runtime ({first}); check {ADDRESS}, {COUNT} and "
            f"{PROCESS_ID}, and start the run before anything else uses jax."
        ) from None
    finally:
        watchdog.cancel()
    if jax.default_backend() == "cpu" and jax.config.jax_enable_compilation_cache:
        # XLA:CPU executables read back from the persistent compilation cache lose the order of
        # their collectives; across processes (gloo) that mismatches them and aborts the run.
        jax.config.update("jax_enable_compilation_cache", False)
        if jax.config.jax_compilation_cache_dir:
            log.warning("multi-process run on the CPU: the persistent compilation cache is off")
    client = getattr(jax_distributed.global_state, "client", None)  # (no public accessor)
    if client is not None:  # one line for a lost process, before JAX's heartbeat aborts
        stale = LIVENESS_FRACTION * heartbeat
        Liveness(client, jax.process_index(), jax.process_count(), stale, leave).start()
    log.info(
        "process %d of %d (%s launch); %d local devices",
        jax.process_index(),
        jax.process_count(),
        launch.cluster or "explicit",
        jax.local_device_count(),
    )
    return launch


def _gather(row: np.ndarray) -> np.ndarray:
    """[processes, ...]: ``row`` of every process (a collective)."""
    return np.asarray(multihost_utils.process_allgather(np.asarray(row)))


def check_same_launch(fingerprint: str, launch: Launch) -> None:
    """Refuses (one line, on every process) a run whose processes were started differently.

    ``fingerprint``: text that must be equal on every process (the resolved config and flags).
    Compares it (hashed) and the process count each process was started with.
    """
    count = jax.process_count()
    if count == 1:
        return
    digest = np.frombuffer(hashlib.sha256(fingerprint.encode()).digest()[:16], np.int32)
    rows = _gather(np.concatenate([[launch.num_processes or count], digest]).astype(np.int32))
    for i, row in enumerate(rows):
        if row[0] != count:
            raise SemsadError(
                f"process {i} was started with {COUNT}={row[0]} but {count} processes joined; "
                f"start every process with {COUNT}={count} (or start {row[0]})."
            )
    for i, row in enumerate(rows):
        if (row[1:] != rows[0][1:]).any():
            raise SemsadError(
                f"process {i} was started with another config or flags than process 0; start every "
                "process with the same command, config file and --config overrides."
            )


def sync(name: str) -> None:
    """A barrier over every process (after process 0 changed files the others read); no-op alone."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def all_agree(ok: bool) -> list[bool]:
    """``ok`` of every process, in process order (a collective; [ok] for a single process)."""
    if jax.process_count() == 1:
        return [bool(ok)]
    return [bool(v) for v in _gather(np.asarray([int(ok)], np.int32)).reshape(-1)]


def smallest(value: int) -> int:
    """The smallest ``value`` over every process (a collective; ``value`` itself alone)."""
    if jax.process_count() == 1:
        return int(value)
    mib = np.asarray([min(int(value) >> 20, 2**31 - 1)], np.int32)  # in MiB: fits int32
    return int(_gather(mib).min()) << 20


def lost_peer(err: BaseException) -> str | None:
    """The one-line message for an error meaning another process of this run is gone, or None."""
    if not jax.distributed.is_initialized() or not isinstance(err, jax.errors.JaxRuntimeError):
        return None
    first = (str(err).strip().splitlines() or [""])[0]
    if not any(word in first.lower() for word in _PEER_WORDS):
        return None
    return (
        f"lost contact with another process of this {jax.process_count()}-process run "
        f"({first[:160]}); rerun every process with the same command to resume from the last "
        "checkpoint."
    )
