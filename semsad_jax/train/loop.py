"""The one training loop both stages run: resumable checkpoints, logging, NaN guard, preemption.

A stage supplies a jitted ``train_step(state, step) -> (state, metrics)`` whose data and
augmentation depend only on ``step`` (:mod:`semsad_jax.train.step`); :func:`run_loop` drives it with
Orbax checkpoints, a progress bar, JSON-lines metrics, a NaN guard and SIGTERM / Ctrl-C handling.

The training state is a plain dict pytree (what Orbax saves)::

    {"params": nnx pure dict, "batch_stats": nnx pure dict, "opt_state": optax state}
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from semsad_jax.errors import SemsadError
from semsad_jax.train.logs import MetricsWriter, Progress
from semsad_jax.workdir.checkpoints import StageCheckpoints

log = logging.getLogger(__name__)
TrainState = dict[str, Any]

__all__ = ["Interrupted", "TrainState", "resume", "run_loop"]


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step.

    Several processes must stop at the SAME step (the checkpoint is saved by all of them), so
    there the decision is JAX's preemption sync point: a SIGTERM to any process (a cluster's
    preemption notice) makes every process stop at one agreed step. Ctrl-C there is not caught:
    the process leaves at once and the others follow (the last periodic checkpoint stays).
    """

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}
        self._together = jax.process_count() > 1

    def __enter__(self) -> _StopRequest:
        for sig in () if self._together else (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def check(self, step: int) -> int | None:
        """The signal to stop on after ``step``, or None."""
        if self._together and multihost_utils.reached_preemption_sync_point(step):
            self.signal = signal.SIGTERM
        return self.signal

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Interrupted(Exception):
    """Training stopped by SIGTERM / SIGINT after saving a checkpoint."""


def resume(
    name: str, checkpoints: StageCheckpoints, state: TrainState, total_steps: int
) -> tuple[TrainState, int]:
    """(state, start step): the newest readable checkpoint of the stage, or ``state`` at step 0.

    Refuses a checkpoint beyond ``total_steps`` (a config with fewer epochs than it was trained with)
    before anything is written, so the stage on disk stays as it was.
    """
    restored = checkpoints.restore(state)
    if restored is None:
        return state, 0
    state, start = restored
    if start > total_steps:
        raise SemsadError(
            f"{name}: the checkpoint is at step {start}, beyond this config's {total_steps} "
            f"steps (it was trained longer); use its epochs, or --overwrite to retrain."
        )
    log.info("resuming %s from step %d of %d", name, start, total_steps)
    return state, start


def run_loop(
    *,
    name: str,
    train_step: Callable[[TrainState, jax.Array], tuple[TrainState, dict]],
    state: TrainState,
    start_step: int,
    total_steps: int,
    steps_per_epoch: int,
    images_per_step: int,
    checkpoints: StageCheckpoints,
    writer: MetricsWriter,
    log_every: int,
    checkpoint_every: int,
    progress: bool = True,
    on_epoch_end: Callable[[int, TrainState], dict] | None = None,
) -> TrainState:
    """Runs ``train_step`` from ``start_step`` to ``total_steps``, saving and logging as it goes.

    Checkpoints every ``checkpoint_every`` steps and at the end; a NaN/inf loss or state stops with
    :class:`SemsadError` without saving (the last good checkpoint stays); SIGTERM / Ctrl-C saves the
    current step and raises :class:`Interrupted`.
    """
    bar = Progress(name, total_steps, start_step, progress)
    t_last, step_last = time.time(), start_step
    step = start_step
    with _StopRequest() as stop:
        while step < total_steps:
            state, metrics = train_step(state, np.int32(step))
            step += 1
            stop.check(step)
            is_save = step % checkpoint_every == 0 or step == total_steps
            if (
                step % log_every == 0
                or is_save
                or stop.signal is not None
                or step == start_step + 1
            ):
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not host.pop("finite", 1.0) or not all(math.isfinite(v) for v in host.values()):
                    checkpoints.wait()
                    raise SemsadError(
                        f"{name} training diverged at step {step} (loss {host.get('loss')}); "
                        f"kept the last good checkpoint (step {checkpoints.latest_step()}); lower the "
                        f"learning rate (with --overwrite: it is part of the stage's identity) or check the data."
                    )
                now = time.time()
                rate = images_per_step * (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                host.update(epoch=step / steps_per_epoch, images_per_s=rate)
                writer.write(step, host)
                bar.update(step, host, rate)
            if is_save or stop.signal is not None:
                checkpoints.save(step, state)
            if on_epoch_end is not None and step % steps_per_epoch == 0:
                extra = on_epoch_end(step // steps_per_epoch, state)
                if extra:
                    writer.write(step, extra)
            if stop.signal is not None:
                checkpoints.wait()
                bar.close()
                raise Interrupted(
                    f"{name}: stopped by signal {stop.signal} at step {step}; checkpoint saved, "
                    f"rerun the same command to resume."
                )
    checkpoints.wait()
    bar.close()
    return state
