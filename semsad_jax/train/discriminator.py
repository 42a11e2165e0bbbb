"""Stage 2: the pair discriminator s (``--mode=discriminator``).

First the feature bank (:mod:`semsad_jax.workdir.bank`: h features, semantic neighbourhoods and
images of the training set) is built or reused. The uint8 training images then live on every
device (``data.placement=device``) or on the host, which sends each step's rows (``host``,
:mod:`semsad_jax.parallel.feed`); the neighbourhoods live on every device. Each step draws B distinct images from a per-pass permutation keyed
by ``fold_in(seed, pass)``, samples positive and negative pairs (:mod:`semsad_jax.method.pairs`) and
gamma with keys from ``fold_in(seed, step)``, all inside one jitted, state-donating step, so a
resumed run continues exactly as an uninterrupted one would.

Read top to bottom: :func:`row_indices` (the rows a step reads), :func:`make_train_step` (the
jitted step, from a small in-process cache, see ``_STEP_CACHE``), :func:`bound_train_step` (it with
its data: a :class:`~semsad_jax.train.stage.CompiledStep`) and :func:`train_discriminator` (the
bank, then the stage, run by :func:`semsad_jax.train.stage.run_stage`). It reads only the
``discriminator`` section (and the run's settings in :class:`StageContext`).

Norms: ``batch`` puts positives and negatives through ONE forward pass (BatchNorm sees a mixed
batch; running statistics at inference); ``group`` likewise; ``batch_transductive`` (the authors')
runs positives and negatives in TWO forward passes with batch statistics, also at inference.
Metrics: loss, ``s_pos`` / ``s_neg`` (mean pair score, :func:`method.losses.pair_score`, of the
batch's positive / negative pairs), gamma, and ``images_per_s`` counting pairs (2B per step).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semsad_jax import parallel
from semsad_jax.data.arrays import ImageSet
from semsad_jax.method.losses import discriminator_loss, pair_score, sample_gamma
from semsad_jax.method.pairs import (
    ROW_SETS,
    build_pair_views,
    pair_settings,
    sample_pair_indices,
    stack_pair,
)
from semsad_jax.method.scoring import forward_pairs
from semsad_jax.models.build import build, compute_dtype, model_stats
from semsad_jax.models.siamese import initialise_from_encoder
from semsad_jax.train import stage
from semsad_jax.train import step as steps
from semsad_jax.train.monitors import heldout_report
from semsad_jax.workdir.bank import build_bank
from semsad_jax.workdir.layout import TRAIN_DIGEST

__all__ = [
    "bound_train_step",
    "make_train_step",
    "row_indices",
    "steps_per_epoch",
    "train_discriminator",
]

log = logging.getLogger(__name__)
STAGE = "discriminator"
# Jitted steps by _step_cache_key (insertion order = age). JAX's own jit cache keys on the function
# object, and make_train_step builds a new closure per run, so without this every run in one process
# (tests, benchmarks, notebooks) compiles the step again. Measured (configs/smoke.py, three
# `run(..., "discriminator", overwrite=True)` in one process, CPU, 1 device): 1.9 s and 2.5 s per
# repeated run with this cache, 32.7 s without it (the first run: 36 s / 55 s). Keyed by
# everything the step reads but the seed (an argument): graphdef, section, dtype, placement,
# num_images, mesh, state shardings.
_STEP_CACHE: dict = {}
_STEP_CACHE_SIZE = 4


def steps_per_epoch(section: Any, num_images: int) -> int:
    """``section.steps_per_epoch``, or len(train) // batch_size when it is 0."""
    return int(section.steps_per_epoch) or num_images // int(section.batch_size)


def _pair_indices(setup: steps.StepSetup):
    """``(step, root, neighbours) -> pair indices`` (:func:`method.pairs.sample_pair_indices`)."""
    num_images, batch = setup.num_images, int(setup.section.batch_size)
    settings = pair_settings(setup.section)

    def at(step, root, neighbours):
        idx = steps.batch_indices(jax.random.fold_in(root, 3), step, num_images, batch)
        key = jax.random.fold_in(jax.random.fold_in(root, 4), step)
        return sample_pair_indices(key, neighbours, idx, settings)

    return at


def row_indices(setup: steps.StepSetup):
    """``(step, root, neighbours) -> (batch, positive partners, negative partners)`` indices."""
    at = _pair_indices(setup)
    return lambda step, root, neighbours: tuple(at(step, root, neighbours)[n] for n in ROW_SETS)


def make_train_step(setup: steps.StepSetup):
    """The jitted step ``(state, data, neighbours i32 [N,k], step) -> (state, metrics)``, the
    seed's key bound.

    ``data``: with ``setup.placement == "device"`` the whole uint8 set [N,H,W,3] replicated; with
    ``"host"`` the step's rows (batch, positive partners, negative partners: uint8 [B,H,W,3] each)
    batch-sharded (:class:`CompiledStep`). ``setup.section``: the ``discriminator`` config
    section. Neighbours are replicated; the state is donated. Metrics: loss, s_pos, s_neg, gamma,
    finite (every parameter finite). ``setup.tx`` must be ``make_optimizer(section, ...)``: steps
    are cached by everything but the seed (graphdef, section, dtype, num_images, mesh, shardings,
    placement), so a resumed or repeated run in the same process, with any seed, does not compile
    again.
    """
    cache_key = _step_cache_key(setup)
    jitted = _STEP_CACHE.get(cache_key) if cache_key is not None else None
    if jitted is None:
        jitted = _compile_step(setup)
        if cache_key is not None:
            while len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
                _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
            _STEP_CACHE[cache_key] = jitted
    return functools.partial(jitted, root=stage.seed_key(setup))


def _step_cache_key(setup: steps.StepSetup) -> tuple | None:
    if not hasattr(setup.section, "to_dict"):
        return None
    leaves, treedef = jax.tree.flatten(setup.state_sharding)
    # Everything the step reads but the seed (an argument): the section's settings and the dtype.
    settings = {
        "section": setup.section.to_dict(),
        "dtype": str(compute_dtype(setup.dtype)),
        "placement": setup.placement,
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return (setup.graphdef, text, int(setup.num_images), setup.mesh, treedef, tuple(leaves))


def _compile_step(setup: steps.StepSetup):
    """The jitted ``step_fn(state, data, neighbours, step, root_key)`` of make_train_step."""
    graphdef, tx, section = setup.graphdef, setup.tx, setup.section
    dtype, host = compute_dtype(setup.dtype), setup.placement == "host"
    settings = pair_settings(section)
    two_passes = section.norm == "batch_transductive"
    gamma_mode, gamma_max = section.gamma, float(section.gamma_max)
    sharded = parallel.batch_sharding(setup.mesh)
    pair_indices_at = _pair_indices(setup)

    def step_fn(state, data, neighbours, step, root):
        indices = pair_indices_at(step, root, neighbours)
        rows = steps.take_rows(data, tuple(indices[n] for n in ROW_SETS), host)
        key = jax.random.fold_in(jax.random.fold_in(root, 4), step)
        pairs = build_pair_views(key, rows, indices, settings, dtype)
        pos = jax.lax.with_sharding_constraint(
            stack_pair(pairs["ref_pos"], pairs["partner_pos"]), sharded
        )
        neg = jax.lax.with_sharding_constraint(
            stack_pair(pairs["ref_neg"], pairs["partner_neg"]), sharded
        )
        gamma = sample_gamma(
            jax.random.fold_in(jax.random.fold_in(root, 5), step), gamma_mode, gamma_max
        )

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            s_pos, s_neg = forward_pairs(model, pos, neg, two_passes)
            loss = discriminator_loss(s_pos, s_neg, gamma)
            means = (jnp.mean(pair_score(s_pos)), jnp.mean(pair_score(s_neg)))
            return loss, (model_stats(model), means)

        new, loss, (mean_pos, mean_neg), finite = steps.gradient_step(tx, state, loss_fn)
        metrics = {"loss": loss, "s_pos": mean_pos, "s_neg": mean_neg, "gamma": gamma}
        return new, {**metrics, "finite": finite}

    return stage.jit_step(step_fn, setup)


def bound_train_step(
    setup: steps.StepSetup, images: np.ndarray, neighbours: np.ndarray
) -> stage.CompiledStep:
    """:func:`make_train_step` with the training images (for ``setup.placement``) and the
    neighbour table bound: ``step(state, i) -> (state, metrics)``; ``close()`` when done."""
    return stage.CompiledStep(
        make_train_step(setup), setup, images, row_indices(setup), (neighbours,)
    )


def _fresh_discriminator(section: Any, seed: int, dtype: Any, encoder: tuple):
    """The discriminator before training: fresh, or with ``init_from_encoder`` its trunk set to
    the encoder's (the siamese extension, :func:`semsad_jax.models.siamese.initialise_from_encoder`)."""
    model = build(STAGE, section, seed=seed, dtype=dtype)
    if getattr(section, "init_from_encoder", False):
        model = initialise_from_encoder(model, encoder)
    return model


def train_discriminator(
    section: Any,
    ctx: stage.StageContext,
    train: ImageSet,
    encoder: tuple,
    test: ImageSet | None = None,
    *,
    identity: dict,
    encoder_identity: dict | None = None,
) -> dict:
    """Builds (or reuses) the feature bank, then trains, resumes or reuses the discriminator.

    Args:
      section: the ``discriminator`` config section.
      ctx: the run's workdir, mesh, seed, dtype and logging switches.
      train: training images (uint8 [N,H,W,3]), as the encoder was trained on.
      encoder: (graphdef, params, batch_stats) of the finished encoder
        (:func:`semsad_jax.workdir.restore.restore_network`).
      test: held-out images for the final held-out pair report, or None.
      identity: the discriminator's identity (it includes the encoder's).
      encoder_identity: recorded in the bank for provenance.
    Returns:
      the stage.json of the discriminator.
    """
    batch = int(section.batch_size)
    steps.check_batch_size(batch, len(train), ctx.mesh, "discriminator.batch_size")
    pair_settings(section)  # unknown variant / preset -> SemsadError before any work
    dtype = compute_dtype(ctx.dtype)
    identity = {**identity, TRAIN_DIGEST: train.digest}  # the images it trains on, by content
    bank = build_bank(
        ctx.workdir,
        section,
        train,
        encoder,
        dtype=dtype,
        seed=ctx.seed,
        encoder_identity=encoder_identity,
        mesh=ctx.mesh,
    )

    # The bank's images are the training images (its digest says so): gather from ``train.images``,
    # which stays memory-mapped with data.placement=host.
    make_step = lambda setup: bound_train_step(setup, train.images, bank.neighbours)

    def report(graphdef, state) -> dict:
        kw = dict(seed=ctx.seed, dtype=dtype, mesh=ctx.mesh)
        heldout = heldout_report(graphdef, state, encoder, test, section, **kw)
        if heldout:
            log.info(
                "discriminator on %d held-out pairs: mean s %.3f on positives vs %.3f on "
                "negatives (pair AUROC %.4f)",
                heldout["heldout_pairs"],
                heldout["heldout_mean_s_pos"],
                heldout["heldout_mean_s_neg"],
                heldout["heldout_pair_auroc"],
            )
        return {"bank_build_seconds": bank.meta.get("build_seconds"), **heldout}

    plan = stage.StagePlan(
        name=STAGE,
        section=section,
        identity=identity,
        build=lambda: _fresh_discriminator(section, ctx.seed, dtype, encoder),
        steps_per_epoch=steps_per_epoch(section, len(train)),
        images_per_step=2 * batch,
        num_train=len(train),
        make_step=make_step,
        placement=parallel.resolve_placement(ctx.placement, train.images.nbytes),
        record={"encoder_digest": bank.meta["encoder_digest"]},
        report=report,
    )
    return stage.run_stage(plan, ctx)
