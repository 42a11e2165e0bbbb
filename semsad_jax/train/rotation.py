"""The rotation-prediction detector's network (``--mode=rotation``; ``rotation.enabled``).

A label-free detector trained for the task (Hendrycks et al. 2019; GEOM, Golan & El-Yaniv 2018):
a ResNet classifies which transformation of ``rotation.transforms`` (the four rotations by default,
:mod:`semsad_jax.method.transforms`) was applied to a training image. Each step draws
``rotation.batch_size`` images from a per-epoch permutation keyed by ``fold_in(seed, epoch)``,
augments them once (``rotation.augment``, keys from ``fold_in(seed, step)``) and feeds every
transformation of each, all inside one jitted, state-donating step: a run is reproducible and a
resumed run continues exactly as an uninterrupted one would. The same stage runner as the encoder
and the discriminator (:func:`semsad_jax.train.stage.run_stage`): identity, checkpoints, resume,
reuse and refusal. It reads only the ``rotation`` section.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import numpy as np
from flax import nnx

from semsad_jax import parallel
from semsad_jax.augment.apply import augment_batch
from semsad_jax.augment.presets import get_spec
from semsad_jax.data.arrays import ImageSet
from semsad_jax.method.scoring import transform_scores
from semsad_jax.method.transforms import all_transforms, num_transforms, transform_loss
from semsad_jax.models.build import build, compute_dtype, model_stats
from semsad_jax.train import stage
from semsad_jax.train import step as steps
from semsad_jax.workdir.layout import TRAIN_DIGEST

log = logging.getLogger(__name__)
STAGE = "rotation"
REPORT_IMAGES = 2000  # test images whose transformation accuracy stage.json records

__all__ = ["bound_train_step", "make_train_step", "row_indices", "train_rotation"]


def row_indices(setup: steps.StepSetup):
    """``(step, root) -> (batch indices,)``: the rows a step reads, in the step and on the host."""
    return steps.batch_rows(setup)


def make_train_step(setup: steps.StepSetup):
    """The jitted step ``(state, data, step) -> (state, metrics)``, the seed's key bound.

    ``data`` as for the encoder (the whole uint8 set, or the step's rows from the host). The batch
    is augmented once and fed in all T transformations (T x batch_size inputs, labels = the
    transformation); loss = their mean cross-entropy. Metrics: ``loss``, ``accuracy`` (of the
    transformation, on the training inputs) and ``finite``.
    """
    graphdef, tx, section, mesh = setup.graphdef, setup.tx, setup.section, setup.mesh
    dtype, host = compute_dtype(setup.dtype), setup.placement == "host"
    spec, kind = get_spec(section.augment), str(section.transforms)
    sharded = parallel.batch_sharding(mesh)
    rows_at = row_indices(setup)

    def step_fn(state, data, step, root):
        (x,) = steps.take_rows(data, rows_at(step, root), host)
        x = jax.lax.with_sharding_constraint(x, sharded)
        key = jax.random.fold_in(jax.random.fold_in(root, 2), step)
        views = augment_batch(key, x, spec, dtype=dtype)
        inputs, labels = all_transforms(views, kind)
        inputs = jax.lax.with_sharding_constraint(inputs, sharded)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            loss, accuracy = transform_loss(model(inputs), labels)
            return loss, (model_stats(model), accuracy)

        new, loss, accuracy, finite = steps.gradient_step(tx, state, loss_fn)
        return new, {"loss": loss, "accuracy": accuracy, "finite": finite}

    return functools.partial(stage.jit_step(step_fn, setup), root=stage.seed_key(setup))


def bound_train_step(setup: steps.StepSetup, images: np.ndarray) -> stage.CompiledStep:
    """:func:`make_train_step` with the training images bound for ``setup.placement``."""
    return stage.CompiledStep(make_train_step(setup), setup, images, row_indices(setup))


def train_rotation(
    section: Any,
    ctx: stage.StageContext,
    train: ImageSet,
    held_out: ImageSet | None = None,
    *,
    identity: dict,
) -> dict:
    """Trains (or resumes, or reuses if finished) the rotation network; returns its stage.json.

    Args:
      section: the ``rotation`` config section.
      ctx: what the run's stages share (:class:`~semsad_jax.train.stage.StageContext`).
      train: training images (uint8 [N, H, W, 3], square); labels never used.
      held_out: optional images (the run's test set) whose transformation accuracy and mean score
        stage.json records (the first :data:`REPORT_IMAGES`; label-free).
      identity: the stage's identity (workdir.layout.stage_identity).
    """
    batch = int(section.batch_size)
    steps.check_batch_size(batch, len(train), ctx.mesh, "rotation.batch_size")
    kind = str(section.transforms)
    num = num_transforms(kind)  # a one-line error for an unknown kind, before anything is built
    dtype = compute_dtype(ctx.dtype)
    identity = {**identity, TRAIN_DIGEST: train.digest}

    def report(graphdef, state) -> dict:
        if held_out is None or not len(held_out):
            return {"num_transforms": num}
        images = held_out.images[:REPORT_IMAGES]
        scores, accuracy = transform_scores(
            graphdef,
            state["params"],
            state["batch_stats"],
            images,
            kind,
            mesh=ctx.mesh,
            inputs_per_call=2048,
            dtype=dtype,
        )
        out = {
            "num_transforms": num,
            "test_transform_accuracy": float(np.mean(accuracy)),
            "test_mean_score": float(np.mean(scores)),
        }
        log.info(
            "rotation network: transformation accuracy %.4f on %d test images (chance %.4f)",
            out["test_transform_accuracy"],
            len(images),
            1.0 / num,
        )
        return out

    plan = stage.StagePlan(
        STAGE,
        section,
        identity,
        lambda: build(STAGE, section, seed=ctx.seed, dtype=dtype),
        steps_per_epoch=len(train) // batch,
        images_per_step=num * batch,
        num_train=len(train),
        make_step=lambda setup: bound_train_step(setup, train.images),
        placement=parallel.resolve_placement(ctx.placement, train.images.nbytes),
        report=report,
    )
    return stage.run_stage(plan, ctx)
