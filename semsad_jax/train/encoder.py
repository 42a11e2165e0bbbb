"""Stage 1: the contrastive encoder h (``--mode=encoder``).

Read top to bottom: :func:`row_indices` (the rows a step reads), :func:`make_train_step` (the
jitted step), :func:`bound_train_step` (it with its data: a
:class:`~semsad_jax.train.stage.CompiledStep`) and :func:`train_encoder` (the stage, run by
:func:`semsad_jax.train.stage.run_stage`). It reads only the ``encoder`` section (and the run's
settings in :class:`~semsad_jax.train.stage.StageContext`).

The uint8 training set lives on every device (``data.placement=device``) or on the host, which
then sends each step's batch rows (``host``, :mod:`semsad_jax.parallel.feed`). Each step draws its
batch from a per-epoch permutation keyed by ``fold_in(seed, epoch)`` and augments two views with
keys from ``fold_in(seed, step)``, all inside one jitted, state-donating step. So a run is reproducible, and
a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semsad_jax import parallel
from semsad_jax.augment.apply import augment_batch
from semsad_jax.augment.presets import get_spec
from semsad_jax.data.arrays import ImageSet
from semsad_jax.method.losses import contrastive_loss
from semsad_jax.method.transforms import all_transforms, transform_loss
from semsad_jax.models.build import build, compute_dtype, model_stats
from semsad_jax.train import stage
from semsad_jax.train import step as steps
from semsad_jax.train.monitors import knn_report, pixel_floor
from semsad_jax.workdir.layout import TRAIN_DIGEST

log = logging.getLogger(__name__)
STAGE = "encoder"

__all__ = [
    "bound_train_step",
    "encoder_loss",
    "make_train_step",
    "row_indices",
    "shifted_instances",
    "train_encoder",
]


def row_indices(setup: steps.StepSetup):
    """``(step, root) -> (batch indices,)``: the rows a step reads, in the step and on the host."""
    return steps.batch_rows(setup)


def make_train_step(setup: steps.StepSetup):
    """The jitted step ``(state, data, step) -> (state, metrics)``, the seed's key bound.

    ``data``: with ``setup.placement == "device"`` the whole uint8 set [N,H,W,3] replicated; with
    ``"host"`` the step's batch rows ``(uint8 [B,H,W,3],)`` batch-sharded (see
    :class:`CompiledStep`). ``setup.section``: the ``encoder`` config section. The state is
    donated. Metrics: ``loss`` and ``finite`` (the loss and every parameter finite); with
    ``encoder.shifted_instances`` (CSI, an extension) the batch's four rotations are the instances
    (:func:`shifted_instances`) and the metrics add the loss's parts (:func:`encoder_loss`).
    """
    graphdef, tx, section, mesh = setup.graphdef, setup.tx, setup.section, setup.mesh
    dtype, host = compute_dtype(setup.dtype), setup.placement == "host"
    spec = get_spec(section.augment)
    loss_name, temperature = section.loss, float(section.temperature)
    shifted = bool(getattr(section, "shifted_instances", False))
    weight = float(getattr(section, "shift_head_weight", 1.0))
    sharded = parallel.batch_sharding(mesh)
    rows_at = row_indices(setup)

    def step_fn(state, data, step, root):
        aug_key = jax.random.fold_in(root, 2)
        (x,) = steps.take_rows(data, rows_at(step, root), host)
        x = jax.lax.with_sharding_constraint(x, sharded)
        key = jax.random.fold_in(aug_key, step)
        instances, labels = shifted_instances(x) if shifted else (x, None)
        v1 = augment_batch(jax.random.fold_in(key, 0), instances, spec, dtype=dtype)
        v2 = augment_batch(jax.random.fold_in(key, 1), instances, spec, dtype=dtype)
        views = jax.lax.with_sharding_constraint(jnp.concatenate([v1, v2]), sharded)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            pooled = model.features(views)
            z = model.project(pooled).astype(jnp.float32)
            aux = model.aux(pooled) if shifted else None
            loss, parts = encoder_loss(loss_name, z, temperature, aux, labels, weight)
            return loss, (model_stats(model), parts)

        new, loss, parts, finite = steps.gradient_step(tx, state, loss_fn)
        return new, {"loss": loss, **parts, "finite": finite}

    return functools.partial(stage.jit_step(step_fn, setup), root=stage.seed_key(setup))


def shifted_instances(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """CSI's shifted instances of a batch [B, H, W, C]: its four rotations as 4 x B distinct
    instances (rotation-major) and their rotation labels int32 [4 x B]."""
    return all_transforms(images, "rotate")


def encoder_loss(
    loss_name: str,
    z: jax.Array,
    temperature: float,
    aux_logits: jax.Array | None = None,
    labels: jax.Array | None = None,
    weight: float = 1.0,
) -> tuple[jax.Array, dict]:
    """The encoder's loss on the head outputs z [2N, D] of two views of N instances (view 1 rows,
    then view 2 rows): the contrastive loss, where every other instance of the batch is a negative
    (with shifted instances: the other rotations of the same image too). With ``aux_logits`` [2N, 4]
    (shifted instances) ``weight`` x the rotation cross-entropy against ``labels`` [N] (both views)
    is added. Returns (loss, {"contrastive", "shift_loss", "shift_accuracy"} of what applies)."""
    n = z.shape[0] // 2
    contrastive = contrastive_loss(loss_name, z[:n], z[n:], temperature)
    if aux_logits is None:
        return contrastive, {}
    shift, accuracy = transform_loss(aux_logits, jnp.concatenate([labels, labels]))
    parts = {"contrastive": contrastive, "shift_loss": shift, "shift_accuracy": accuracy}
    return contrastive + weight * shift, parts


def bound_train_step(setup: steps.StepSetup, images: np.ndarray) -> stage.CompiledStep:
    """:func:`make_train_step` with the training images bound for ``setup.placement``:
    ``step(state, i) -> (state, metrics)``; ``close()`` when done."""
    return stage.CompiledStep(make_train_step(setup), setup, images, row_indices(setup))


def train_encoder(
    section: Any,
    ctx: stage.StageContext,
    train: ImageSet,
    test: ImageSet | None = None,
    *,
    identity: dict,
    feature_batch_size: int | None = None,
) -> dict:
    """Trains (or resumes, or reuses if finished) the encoder; returns its stage.json.

    Args:
      section: the ``encoder`` config section.
      ctx: what the run's stages share (:class:`~semsad_jax.train.stage.StageContext`).
      train: training images (uint8 [N,H,W,3]); labels unused except by the kNN monitor.
      test: optional labelled images for the kNN monitor (accuracy at the end and every
        ``section.knn_every_epochs``).
      identity: the encoder's identity (workdir.layout.stage_identity).
      feature_batch_size: inference batch of the kNN monitor; None: ``section.batch_size`` (the
        batch only sets how many images one call computes, never the features).
    """
    batch = int(section.batch_size)
    steps.check_batch_size(batch, len(train), ctx.mesh, "encoder.batch_size")
    dtype = compute_dtype(ctx.dtype)
    identity = {**identity, TRAIN_DIGEST: train.digest}  # the images it trains on, by content
    feature_batch_size = int(feature_batch_size or batch)

    make_step = lambda setup: bound_train_step(setup, train.images)

    def knn(graphdef, state) -> dict:
        kw = dict(batch_size=feature_batch_size, dtype=dtype, mesh=ctx.mesh)
        return knn_report(graphdef, state, train, test, section, **kw)

    def on_epoch_end(epoch: int, graphdef, state) -> dict:
        every = int(section.knn_every_epochs)
        if every and epoch % every == 0 and epoch < int(section.epochs):
            return knn(graphdef, state)
        return {}

    def report(graphdef, state) -> dict:
        out = {**knn(graphdef, state), **pixel_floor(train, test, section)}
        if "knn_accuracy" in out:
            log.info(
                "encoder kNN accuracy %.4f on h, %.4f on the backbone (raw-pixel kNN floor %.4f)",
                out["knn_accuracy"],
                out["knn_accuracy_penultimate"],
                out["pixel_knn_accuracy"],
            )
        return out

    plan = stage.StagePlan(
        name=STAGE,
        section=section,
        identity=identity,
        build=lambda: build(STAGE, section, seed=ctx.seed, dtype=dtype),
        steps_per_epoch=len(train) // batch,
        images_per_step=(8 if getattr(section, "shifted_instances", False) else 2) * batch,
        num_train=len(train),
        make_step=make_step,
        placement=parallel.resolve_placement(ctx.placement, train.images.nbytes),
        on_epoch_end=on_epoch_end,
        report=report,
    )
    return stage.run_stage(plan, ctx)
