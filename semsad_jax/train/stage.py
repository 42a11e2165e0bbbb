"""ONE stage runner for both training stages: open, identity, resume, loop, summary.

A stage (``train.encoder``, ``train.discriminator``) describes itself as a :class:`StagePlan` (its
config section, identity, model, steps and jitted step); :func:`run_stage` does the rest the same
way for both::

    open WORKDIR/<stage> (refuse another identity; --overwrite moves it aside)
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
from flax import nnx
from jax.sharding import Mesh

from semsad_jax.errors import SemsadError
from semsad_jax.models.build import compute_dtype
from semsad_jax.train.logs import MetricsWriter
from semsad_jax.train.loop import TrainState, resume, run_loop
from semsad_jax.train.step import StepSetup, init_state
from semsad_jax.workdir.checkpoints import StageCheckpoints
from semsad_jax.workdir.layout import IDENTITY_VERSION, Workdir, identity_digest

log = logging.getLogger(__name__)

__all__ = ["StageContext", "StagePlan", "run_stage"]


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What every stage of one run shares (built once by :mod:`semsad_jax.run`).

    Attributes:
      workdir: the run's workdir; mesh: the device mesh; seed and dtype: ``config.seed`` and
      ``config.dtype``; progress / tensorboard: ``config.progress`` / ``config.tensorboard``;
      overwrite: ``--overwrite`` (retrain a finished stage, the old one moved aside);
      placement: ``data.placement``, where the training set lives (device, host or auto).
    """

    workdir: Workdir
    mesh: Mesh
    seed: int = 0
    dtype: str = "float32"
    progress: bool = True
    tensorboard: bool = False
    overwrite: bool = False
    placement: str = "auto"


StepFn = Callable[[TrainState, jax.Array], tuple[TrainState, dict]]


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
      make_step: ``StepSetup -> step(state, step) -> (state, metrics)``: the stage's jitted step
        with its data bound (:func:`train.step.bind_data`; its ``close()`` is called at the end).
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
    make_step: Callable[[StepSetup], StepFn]
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
    meta = wd.open_stage(plan.name, plan.identity, ctx.overwrite)
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
        getattr(step_fn, "close", lambda: None)()
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
