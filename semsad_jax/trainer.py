"""What every training stage shares: optimiser, schedule, state, the loop, logging, preemption.

A stage (encoder, discriminator) supplies a jitted ``train_step(state, step) -> (state, metrics)``
whose data and augmentation depend only on ``step``; :func:`run_loop` drives it with resumable
checkpoints, a progress bar, JSON-lines metrics, a NaN guard and SIGTERM / Ctrl-C handling.

The training state is a plain dict pytree (what Orbax saves)::

    {"params": nnx pure dict, "batch_stats": nnx pure dict, "opt_state": optax state}
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from semsad_jax import parallel
from semsad_jax.checkpoints import StageCheckpoints
from semsad_jax.errors import SemsadError

log = logging.getLogger(__name__)
TrainState = dict[str, Any]


# ---- optimiser --------------------------------------------------------------------------------


def make_schedule(cfg: Any, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule (per step) from a stage config section.

    ``schedule``: "constant" | "cosine" | "piecewise" (``lr_boundaries`` in epochs, ``lr_scales``
    multiplied in cumulatively, optax semantics); ``warmup_epochs`` of linear warm-up for any.
    """
    lr = float(cfg.learning_rate)
    kind = cfg.get("schedule", "piecewise" if cfg.get("lr_boundaries") else "constant")
    total = max(1, int(cfg.epochs) * steps_per_epoch)
    if kind == "constant":
        sched = optax.constant_schedule(lr)
    elif kind == "cosine":
        sched = optax.cosine_decay_schedule(lr, total)
    elif kind == "piecewise":
        bounds = [int(b) * steps_per_epoch for b in cfg.get("lr_boundaries", ())]
        scales = [float(s) for s in cfg.get("lr_scales", ())]
        if len(bounds) != len(scales):
            raise SemsadError("lr_boundaries and lr_scales must have the same length.")
        sched = optax.piecewise_constant_schedule(lr, dict(zip(bounds, scales)))
    else:
        raise SemsadError(f"unknown schedule {kind!r}; use constant, cosine or piecewise.")
    warmup = int(cfg.get("warmup_epochs", 0)) * steps_per_epoch
    if warmup:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched


def make_optimizer(cfg: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Optax optimiser from ``cfg.optimizer`` / ``learning_rate`` / ``weight_decay``.

    "adam" and "amsgrad" use coupled L2 like ``torch.optim.Adam(weight_decay=...)`` (the paper's and
    the authors' setting); "adamw" decoupled decay; "sgd" momentum 0.9 with coupled decay.
    """
    sched = make_schedule(cfg, steps_per_epoch)
    wd = float(cfg.weight_decay)
    name = cfg.optimizer
    decay = [optax.add_decayed_weights(wd)] if wd else []
    if name == "adam":
        return optax.chain(*decay, optax.scale_by_adam(), optax.scale_by_learning_rate(sched))
    if name == "amsgrad":
        return optax.chain(*decay, optax.scale_by_amsgrad(), optax.scale_by_learning_rate(sched))
    if name == "adamw":
        return optax.adamw(sched, weight_decay=wd)
    if name == "sgd":
        return optax.chain(*decay, optax.sgd(sched, momentum=0.9))
    raise SemsadError(f"unknown optimizer {name!r}; use adam, amsgrad, adamw or sgd.")


# ---- state ------------------------------------------------------------------------------------


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, params pure dict, batch_stats pure dict) of an NNX model."""
    graphdef, params, stats = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def merge_model(graphdef: nnx.GraphDef, params: dict, batch_stats: dict) -> nnx.Module:
    """Rebuilds the NNX model from :func:`split_model`'s pieces (inside or outside jit)."""
    return nnx.merge(graphdef, params, batch_stats)


def model_stats(model: nnx.Module) -> dict:
    """The non-parameter state (BatchNorm running statistics) of ``model`` as a pure dict."""
    return nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[2])


def with_seed_key(jitted: Callable, seed: int, mesh: Any) -> Callable:
    """``jitted(*args, key)`` as ``step(*args)``, with ``key = jax.random.key(seed)`` replicated.

    The seed's key is an argument of the compiled step, not a constant in it: runs with other
    seeds reuse the same program (in process, and through JAX's persistent compilation cache).
    """
    root = jax.device_put(jax.random.key(int(seed)), parallel.replicated(mesh))
    return lambda *args: jitted(*args, root)


def tree_is_finite(tree: Any) -> jax.Array:
    """Scalar bool: every floating leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_batch_size(batch_size: int, num_images: int, mesh: Any, key: str) -> None:
    """One-line SemsadError unless ``batch_size`` splits over the devices and fits the data."""
    from semsad_jax.parallel import check_divisible

    check_divisible(batch_size, mesh, key)
    if batch_size > num_images:
        raise SemsadError(
            f"{key}={batch_size} is larger than the {num_images} training images; lower it."
        )


# ---- logging ----------------------------------------------------------------------------------


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
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
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


# ---- the loop ---------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._old[sig] = signal.signal(sig, self._handle)
        return self

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
            state, metrics = train_step(state, jnp.asarray(step, jnp.int32))
            step += 1
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
                        f"learning rate or check the data."
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
