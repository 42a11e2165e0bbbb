"""Stage 2: the pair discriminator s (``--mode=discriminator``).

First the feature bank (:mod:`semsad_jax.bank`: h features, semantic neighbourhoods and images of
the training set) is built or reused. The bank's images and neighbourhoods then live on the device
(replicated, uint8); each step draws B distinct images from a per-pass permutation keyed by
``fold_in(seed, pass)``, samples positive and negative pairs (:mod:`semsad_jax.pairs`) and gamma with
keys from ``fold_in(seed, step)``, all inside one jitted, state-donating step, so a resumed run
continues exactly as an uninterrupted one would.

Norms: ``batch`` puts positives and negatives through ONE forward pass (BatchNorm sees a mixed
batch; running statistics at inference); ``group`` likewise; ``batch_transductive`` (the authors')
runs positives and negatives in TWO forward passes with batch statistics, also at inference.
Metrics: loss, ``s_pos`` / ``s_neg`` (mean pair score, :func:`losses.pair_score`, of the batch's
positive / negative pairs), gamma, and ``images_per_s`` counting pairs (2B per step).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.bank import bank_dir, build_bank
from semsad_jax.checkpoints import (
    StageCheckpoints,
    check_stage_identity,
    open_stage,
    read_json,
    write_json,
)
from semsad_jax.data import ImageSet
from semsad_jax.errors import SemsadError
from semsad_jax.losses import discriminator_loss, pair_score, sample_gamma
from semsad_jax.models import make_discriminator
from semsad_jax.pair_scoring import discriminator_scores, forward_pairs, heldout_report
from semsad_jax.pairs import pair_settings, sample_pairs, stack_pair
from semsad_jax.train_encoder import compute_dtype, encoder_identity, load_encoder
from semsad_jax.trainer import (
    MetricsWriter,
    check_batch_size,
    make_optimizer,
    model_stats,
    resume,
    run_loop,
    split_model,
    tree_is_finite,
    with_seed_key,
)

__all__ = [
    "discriminator_scores",  # re-exported from pair_scoring for the evaluation stage
    "load_discriminator",
    "train_discriminator",
]

log = logging.getLogger(__name__)
STAGE = "discriminator"
ARCH_KEYS = ("depth", "width", "activation", "norm", "out_dim", "head")
PAIR_KEYS = ("neighbours", "mu", "pairs", "pos_augment", "neg_augment", "gamma", "gamma_max")
_STEP_CACHE: dict = {}  # jitted steps by _step_cache_key (insertion order = age)
_STEP_CACHE_SIZE = 4


def build_discriminator(config: Any, seed: int | None = None) -> nnx.Module:
    """The discriminator s described by ``config.discriminator`` with fresh parameters."""
    seed = config.seed if seed is None else seed
    return make_discriminator(
        config.discriminator, rngs=nnx.Rngs(seed + 1), dtype=compute_dtype(config)
    )


def discriminator_identity(config: Any) -> dict:
    """What must match for a discriminator checkpoint to be resumed or reused."""
    s = config.discriminator
    ident = {f"discriminator.{k}": s.get(k) for k in ARCH_KEYS + PAIR_KEYS}
    ident.update(encoder_identity(config))
    return ident


def steps_per_epoch(config: Any, num_images: int) -> int:
    """``discriminator.steps_per_epoch``, or len(train) // batch_size when it is 0."""
    s = config.discriminator
    return int(s.get("steps_per_epoch", 0)) or num_images // int(s.batch_size)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: Any,
    num_images: int,
    mesh: Mesh,
    state_sharding: Any,
):
    """The jitted step ``(state, images u8 [N,H,W,3], neighbours i32 [N,k], step) -> (state, metrics)``.

    Images and neighbours are replicated; the state is donated. Metrics: loss, s_pos, s_neg, gamma,
    finite (every parameter finite). ``tx`` must be ``make_optimizer(config.discriminator, ...)``:
    steps are cached by (graphdef, config.discriminator, dtype, num_images, mesh, shardings), so a
    resumed or repeated run in the same process, with any seed, does not compile again.
    """
    cache_key = _step_cache_key(graphdef, config, num_images, mesh, state_sharding)
    jitted = _STEP_CACHE.get(cache_key) if cache_key is not None else None
    if jitted is None:
        jitted = _compile_step(graphdef, tx, config, num_images, mesh, state_sharding)
        if cache_key is not None:
            while len(_STEP_CACHE) >= _STEP_CACHE_SIZE:
                _STEP_CACHE.pop(next(iter(_STEP_CACHE)))
            _STEP_CACHE[cache_key] = jitted
    return with_seed_key(jitted, config.seed, mesh)


def _compile_step(graphdef, tx, config, num_images: int, mesh: Mesh, state_sharding):
    """The jitted ``step_fn(state, images, neighbours, step, root_key)`` of make_train_step."""
    s = config.discriminator
    batch = int(s.batch_size)
    batches_per_pass = num_images // batch
    settings = pair_settings(s)
    dtype = compute_dtype(config)
    two_passes = s.norm == "batch_transductive"
    sharded = parallel.batch_sharding(mesh)

    def step_fn(state, images, neighbours, step, root):
        data_key, pair_key, gamma_key = (jax.random.fold_in(root, i) for i in (3, 4, 5))
        data_pass, within = step // batches_per_pass, step % batches_per_pass
        order = jax.random.permutation(jax.random.fold_in(data_key, data_pass), num_images)
        idx = jax.lax.dynamic_slice(order, (within * batch,), (batch,))
        pairs = sample_pairs(
            jax.random.fold_in(pair_key, step), images, neighbours, idx, settings, dtype
        )
        pos = jax.lax.with_sharding_constraint(
            stack_pair(pairs["ref_pos"], pairs["partner_pos"]), sharded
        )
        neg = jax.lax.with_sharding_constraint(
            stack_pair(pairs["ref_neg"], pairs["partner_neg"]), sharded
        )
        gamma = sample_gamma(jax.random.fold_in(gamma_key, step), s.gamma, float(s.gamma_max))

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            s_pos, s_neg = forward_pairs(model, pos, neg, two_passes)
            loss = discriminator_loss(s_pos, s_neg, gamma)
            means = (jnp.mean(pair_score(s_pos)), jnp.mean(pair_score(s_neg)))
            return loss, (model_stats(model), means)

        (loss, (stats, (mean_pos, mean_neg))), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "batch_stats": stats, "opt_state": opt_state}
        metrics = {
            "loss": loss,
            "s_pos": mean_pos,
            "s_neg": mean_neg,
            "gamma": gamma,
            "finite": tree_is_finite(params) & jnp.isfinite(loss),
        }
        return new, metrics

    rep = parallel.replicated(mesh)
    return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(state_sharding, rep))


def _step_cache_key(graphdef, config, num_images, mesh, state_sharding) -> tuple | None:
    if not hasattr(config, "to_dict"):
        return None
    leaves, treedef = jax.tree.flatten(state_sharding)
    # Everything the step reads: the stage's settings and the dtype (the seed is an argument).
    settings = {"discriminator": config.discriminator.to_dict(), "dtype": config.get("dtype")}
    cfg = json.dumps(settings, sort_keys=True, default=str)
    return (graphdef, cfg, int(num_images), mesh, treedef, tuple(leaves))


def init_state(config: Any, spe: int, mesh: Mesh):
    """(graphdef, optimiser, replicated initial state) for ``config`` (``spe`` steps per epoch)."""
    graphdef, params, stats = split_model(build_discriminator(config))
    tx = make_optimizer(config.discriminator, spe)
    state = {"params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    return graphdef, tx, parallel.replicate(state, mesh)


def _load_matching_encoder(workdir: str, config: Any, mesh: Mesh):
    """load_encoder, with a mismatch message that says how to retrain the ENCODER."""
    meta = read_json(os.path.join(workdir, "encoder", "stage.json"))
    recorded, wanted = (meta or {}).get("identity", {}), encoder_identity(config)
    diff = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
    if meta is not None and diff:
        k = diff[0]
        raise SemsadError(
            f"the encoder in {workdir}/encoder was trained with {k}={recorded.get(k)!r}, but the "
            f"config says {k}={wanted.get(k)!r}; use the config it was trained with, or retrain it "
            f"first with --mode=encoder --overwrite."
        )
    return load_encoder(workdir, config, mesh)


def train_discriminator(
    config: Any,
    workdir: str,
    train: ImageSet,
    test: ImageSet | None = None,
    *,
    mesh: Mesh | None = None,
    overwrite: bool = False,
) -> dict:
    """Builds the feature bank, then trains (or resumes, or reuses) the discriminator.

    Args:
      train: training images (uint8 [N,H,W,3]), as the encoder was trained on.
      test: held-out images for the final report; None loads ``config.data.test`` (if set).
    Returns:
      the summary also written to ``WORKDIR/discriminator/stage.json``.
    Raises SemsadError when the encoder is missing or does not match ``config``.
    """
    mesh = mesh or parallel.make_mesh()
    s = config.discriminator
    batch = int(s.batch_size)
    check_batch_size(batch, len(train), mesh, "discriminator.batch_size")
    pair_settings(s)  # unknown variant / preset -> SemsadError before any work
    encoder = _load_matching_encoder(workdir, config, mesh)
    stage_dir = os.path.join(workdir, STAGE)
    identity = discriminator_identity(config)
    meta = open_stage(stage_dir, identity, STAGE, overwrite)
    bank = build_bank(config, workdir, train, mesh=mesh, encoder=encoder)
    digest = bank.meta["encoder_digest"]
    if meta is not None and meta.get("encoder_digest") != digest:
        raise SemsadError(
            f"{stage_dir} was trained with another encoder than the one in {workdir}/encoder; "
            f"rerun with --overwrite to retrain the discriminator."
        )
    spe = steps_per_epoch(config, len(train))
    total = int(s.epochs) * spe
    if meta and meta.get("finished") and meta.get("total_steps") == total:
        log.info("discriminator already trained (%d steps) in %s; reusing it", total, stage_dir)
        return meta

    graphdef, tx, state = init_state(config, spe, mesh)
    ckpts = StageCheckpoints(stage_dir, keep=int(s.keep_checkpoints))
    state, start = resume(STAGE, ckpts, state, total)
    base = {"identity": identity, "total_steps": total, "encoder_digest": digest}
    write_json(os.path.join(stage_dir, "stage.json"), {**base, "finished": False})
    images = parallel.replicate(bank.images, mesh)
    neighbours = parallel.replicate(bank.neighbours, mesh)
    step_fn = make_train_step(
        graphdef, tx, config, len(train), mesh, jax.tree.map(lambda x: x.sharding, state)
    )
    t0 = time.time()
    state = run_loop(
        name=STAGE,
        train_step=lambda st, step: step_fn(st, images, neighbours, step),
        state=state,
        start_step=start,
        total_steps=total,
        steps_per_epoch=spe,
        images_per_step=2 * batch,
        checkpoints=ckpts,
        writer=MetricsWriter(
            os.path.join(stage_dir, "metrics.jsonl"), config.get("tensorboard", False)
        ),
        log_every=int(s.log_every_steps),
        checkpoint_every=int(s.checkpoint_every_steps),
        progress=config.get("progress", True),
    )
    ckpts.close()
    summary = {
        **base,
        "finished": True,
        "train_minutes": round((time.time() - t0) / 60, 3),
        "num_train": len(train),
        "bank_build_seconds": bank.meta.get("build_seconds"),
    }
    if test is None and config.data.get("test"):
        from semsad_jax.pipeline import load_test_set

        test = load_test_set(config)
    report = heldout_report(graphdef, state, encoder, test, config, mesh)
    summary.update(report)
    write_json(os.path.join(stage_dir, "stage.json"), summary)
    if report:
        log.info(
            "discriminator on %d held-out pairs: mean s %.3f on positives vs %.3f on negatives "
            "(pair AUROC %.4f)",
            report["heldout_pairs"],
            report["heldout_mean_s_pos"],
            report["heldout_mean_s_neg"],
            report["heldout_pair_auroc"],
        )
    return summary


def load_discriminator(workdir: str, config: Any, mesh: Mesh | None = None):
    """(graphdef, params, batch_stats) of the finished discriminator in ``workdir`` (from Orbax).

    Raises SemsadError when there is none, it does not match ``config``, or the workdir's feature
    bank comes from another encoder.
    """
    mesh = mesh or parallel.make_mesh()
    stage_dir = os.path.join(workdir, STAGE)
    meta = check_stage_identity(stage_dir, discriminator_identity(config), STAGE, overwrite=False)
    if meta is None or not meta.get("finished"):
        raise SemsadError(
            f"no trained discriminator in {stage_dir}; run --mode=discriminator with this "
            f"--workdir first."
        )
    bank_meta = read_json(os.path.join(bank_dir(workdir), "bank.json"))
    if bank_meta is not None and bank_meta.get("encoder_digest") != meta.get("encoder_digest"):
        raise SemsadError(
            f"the feature bank in {workdir} comes from another encoder than the discriminator; "
            f"rerun --mode=discriminator --overwrite."
        )
    graphdef, _, state = init_state(config, 1, mesh)
    restored = StageCheckpoints(stage_dir, keep=int(config.discriminator.keep_checkpoints)).restore(
        state
    )
    if restored is None:
        raise SemsadError(
            f"the discriminator checkpoint in {stage_dir} is missing; rerun --mode=discriminator."
        )
    state, _ = restored
    return graphdef, state["params"], state["batch_stats"]
