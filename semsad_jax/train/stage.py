"""ONE stage runner for both training stages: open, identity, resume, loop, summary.

A stage (``train.encoder``, ``train.discriminator``) compiles its step with :func:`jit_step` and
:func:`seed_key`, binds its data with :class:`CompiledStep` (call it, close it), and describes
itself as a :class:`StagePlan` (its config section, identity, model, steps and how to build its
CompiledStep); :func:`run_stage` does the rest the same way for both::

    open WORKDIR/<stage> (refuse another identity, unless run.py already checked it;
                          --overwrite moves it aside)
    finished with the same number of steps?  -> reuse it, return its stage.json
    build the model and optimiser, restore the newest checkpoint (resume) or start at step 0
    stage.json {finished: false} -> run_loop (checkpoints, metrics, SIGTERM) -> report
    stage.json {finished: true, train_minutes, num_train, ...report}
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.errors import SemsadError
from semsad_jax.models.build import compute_dtype
from semsad_jax.train.logs import MetricsWriter
from semsad_jax.train.loop import TrainState, resume, run_loop
from semsad_jax.train.step import StepSetup, init_state
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import IDENTITY_VERSION, Workdir, identity_digest

log = logging.getLogger(__name__)

__all__ = ["CompiledStep", "StageContext", "StagePlan", "jit_step", "run_stage", "seed_key"]


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage of one run shares (built once by :mod:`semsad_jax.run`).

    Attributes:
      workdir: the run's workdir; mesh: the device mesh; seed and dtype: ``config.seed`` and
      ``config.dtype``; progress / tensorboard: ``config.progress`` / ``config.tensorboard``;
      overwrite: ``--overwrite`` (retrain a finished stage, the old one moved aside);
      placement: ``data.placement``, where the training set lives (device, host or auto);
      identities_checked: the caller (:func:`semsad_jax.run.run`) has already checked every stage's
        identity against the workdir, before writing anything, so :func:`run_stage` does not check
        it again. False (notebooks, tests): :func:`run_stage` checks it.
    """

    workdir: Workdir
    mesh: Mesh
    seed: int = 0
    dtype: str = "float32"
    progress: bool = True
    tensorboard: bool = False
    overwrite: bool = False
    placement: str = "auto"
    identities_checked: bool = False


def jit_step(step_fn: Callable, setup: StepSetup) -> Callable:
    """``jax.jit(step_fn)`` with the state (argument 0) donated and kept in its sharding; metrics
    (the second output) replicated. ``step_fn``'s last argument is ``root``, the seed's key: a
    stage's ``make_train_step`` returns ``functools.partial(jit_step(step_fn, setup),
    root=seed_key(setup))``."""
    out = (setup.state_sharding, parallel.replicated(setup.mesh))
    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=out)


def seed_key(setup: StepSetup) -> jax.Array:
    """``jax.random.key(setup.seed)``, replicated: the compiled step's ``root`` argument.

    The seed's key is an argument of the compiled step, not a constant in it: runs with other
    seeds reuse the same program (in process, and through JAX's persistent compilation cache).
    """
    return parallel.put(jax.random.key(int(setup.seed)), parallel.replicated(setup.mesh))


class CompiledStep:
    """A stage's compiled step with its data bound: ``step(state, i) -> (state, metrics)``; call
    ``close()`` when done.

    Args:
      jitted: the stage's ``make_train_step(setup)``: ``(state, data, *extra, i) -> (state,
        metrics)``, compiled, the seed's key bound.
      setup: what it was compiled from (mesh, seed, placement "device" or "host").
      images: the uint8 training set [N,H,W,3]. ``"device"``: ``data`` = ``images`` replicated on
        every device, once. ``"host"``: ``data`` = the rows at ``row_indices(i, root, *extra)``
        (the function the jitted step also calls), gathered on the host by a
        :class:`parallel.HostFeed` one step ahead; ``close()`` stops its thread.
      row_indices: the stage's ``row_indices(setup)``.
      extra: host arrays the step also reads (e.g. the neighbour table), replicated on every
        device.
    """

    def __init__(
        self,
        jitted: Callable,
        setup: StepSetup,
        images: np.ndarray,
        row_indices: Callable[..., tuple[jax.Array, ...]],
        extra: tuple = (),
    ):
        self.jitted = jitted
        self.extra = parallel.replicate(tuple(extra), setup.mesh)
        self.data, self.feed = None, None
        if setup.placement != "host":
            self.data = parallel.replicate(images, setup.mesh)
            return
        local = jax.local_devices()[0]  # every process computes the same indices on its own device
        root = jax.device_put(jax.random.key(int(setup.seed)), local)
        local_extra = tuple(jax.device_put(np.asarray(x), local) for x in extra)
        rows_at = jax.jit(row_indices)
        indices = lambda i: tuple(np.asarray(a) for a in rows_at(np.int32(i), root, *local_extra))
        self.feed = parallel.HostFeed(images, indices, setup.mesh)

    def __call__(self, state: TrainState, i: jax.Array) -> tuple[TrainState, dict]:
        data = self.data if self.feed is None else self.feed(int(i))
        return self.jitted(state, data, *self.extra, i)

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()


@dataclasses.dataclass
class StagePlan:
    """One training stage, as :func:`run_stage` needs it.

    Attributes:
      name: "encoder" or "discriminator" (the stage directory).
      section: the stage's config section (epochs, keep_checkpoints, log / checkpoint intervals,
        optimiser settings).
      identity: what must match to resume or reuse the stage (workdir.layout.stage_identity).
      build: a fresh model with initial parameters.
      steps_per_epoch, images_per_step, num_train: sizes, for the schedule and the logs.
      make_step: ``StepSetup -> CompiledStep``: the stage's ``bound_train_step`` with its data
        (its ``close()`` is called at the end).
      placement: "device" or "host", where the training set lives (resolved ``data.placement``).
      record: extra stage.json fields that must also match to reuse the stage (e.g. the digest of
        the encoder the discriminator was trained on).
      on_epoch_end: ``(epoch, graphdef, state) -> metrics`` written to metrics.jsonl, or None.
      report: ``(graphdef, state) -> summary fields`` computed once training is finished.
    """

    name: str
    section: Any
    identity: dict
    build: Callable[[], nnx.Module]
    steps_per_epoch: int
    images_per_step: int
    num_train: int
    make_step: Callable[[StepSetup], CompiledStep]
    placement: str = "device"
    record: dict = dataclasses.field(default_factory=dict)
    on_epoch_end: Callable[[int, nnx.GraphDef, TrainState], dict] | None = None
    report: Callable[[nnx.GraphDef, TrainState], dict] | None = None

    @property
    def total_steps(self) -> int:
        return int(self.section.epochs) * self.steps_per_epoch


def _check_record(plan: StagePlan, meta: dict, wd: Workdir) -> None:
    for key, value in plan.record.items():
        if meta.get(key) != value:
            raise SemsadError(
                f"{wd.stage_dir(plan.name)} was trained with another {key} than this run's "
                f"({meta.get(key)!r} vs {value!r}); rerun with --overwrite to retrain the "
                f"{plan.name}."
            )


def run_stage(plan: StagePlan, ctx: StageContext) -> dict:
    """Trains, resumes or reuses ``plan`` in ``ctx.workdir``; returns the stage's stage.json."""
    wd, section = ctx.workdir, plan.section
    meta = wd.open_stage(plan.name, plan.identity, ctx.overwrite, check=not ctx.identities_checked)
    if meta is not None:
        _check_record(plan, meta, wd)
    total = plan.total_steps
    if meta and meta.get("finished") and meta.get("total_steps") == total:
        log.info("%s already trained (%d steps) in %s; reusing it", plan.name, total, wd.path)
        return meta

    graphdef, tx, state = init_state(plan.build(), section, plan.steps_per_epoch, ctx.mesh)
    checkpoints = StageCheckpoints(wd.stage_dir(plan.name), keep=int(section.keep_checkpoints))
    state, start = resume(plan.name, checkpoints, state, total)
    base = {
        "identity": plan.identity,
        "identity_version": IDENTITY_VERSION,
        "identity_digest": identity_digest(plan.identity),
        "epochs": int(section.epochs),
        "total_steps": total,
        **plan.record,
    }
    wd.write(wd.stage_json(plan.name), {**base, "finished": False})
    setup = StepSetup(
        graphdef=graphdef,
        tx=tx,
        state_sharding=jax.tree.map(lambda x: x.sharding, state),
        section=section,
        num_images=plan.num_train,
        mesh=ctx.mesh,
        seed=ctx.seed,
        dtype=compute_dtype(ctx.dtype),
        placement=plan.placement,
    )
    step_fn = plan.make_step(setup)
    on_epoch_end = None
    if plan.on_epoch_end is not None:
        on_epoch_end = lambda epoch, st: plan.on_epoch_end(epoch, graphdef, st)
    t0 = time.time()
    try:
        state = run_loop(
            name=plan.name,
            train_step=step_fn,
            state=state,
            start_step=start,
            total_steps=total,
            steps_per_epoch=plan.steps_per_epoch,
            images_per_step=plan.images_per_step,
            checkpoints=checkpoints,
            writer=MetricsWriter(wd.metrics_jsonl(plan.name), ctx.tensorboard),
            log_every=int(section.log_every_steps),
            checkpoint_every=int(section.checkpoint_every_steps),
            progress=ctx.progress,
            on_epoch_end=on_epoch_end,
        )
    finally:
        step_fn.close()
    checkpoints.close()
    summary = {
        **base,
        "finished": True,
        "train_minutes": round((time.time() - t0) / 60, 3),
        "num_train": plan.num_train,
    }
    if plan.report is not None:
        summary.update(plan.report(graphdef, state))
    wd.write(wd.stage_json(plan.name), summary)
    return summary
