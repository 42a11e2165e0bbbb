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

import logging
import os
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.augment import to_float
from semsad_jax.bank import bank_dir, build_bank
from semsad_jax.checkpoints import (
    StageCheckpoints,
    check_stage_identity,
    move_aside,
    read_json,
    write_json,
)
from semsad_jax.data import ImageSet
from semsad_jax.errors import SemsadError
from semsad_jax.features import compute_features, map_batched
from semsad_jax.losses import discriminator_loss, pair_score, sample_gamma
from semsad_jax.metrics import ood_metrics
from semsad_jax.models import make_discriminator
from semsad_jax.neighbors import semantic_neighbourhoods
from semsad_jax.pairs import pair_settings, sample_pairs, stack_pair
from semsad_jax.train_encoder import compute_dtype, encoder_identity, load_encoder
from semsad_jax.trainer import (
    MetricsWriter,
    make_optimizer,
    model_stats,
    run_loop,
    split_model,
    tree_is_finite,
)

log = logging.getLogger(__name__)
STAGE = "discriminator"
ARCH_KEYS = ("depth", "width", "activation", "norm", "out_dim", "head")
PAIR_KEYS = ("neighbours", "mu", "pairs", "pos_augment", "neg_augment", "gamma", "gamma_max")
HELDOUT_MAX_BATCHES = 16  # Held-out report: at most this many batches of pairs.


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


def _forward(model: nnx.Module, pos: jax.Array, neg: jax.Array, two_passes: bool):
    """Logits [B, K] of the positive and negative inputs [B, H, W, 6]."""
    if two_passes:
        return model(pos), model(neg)
    out = model(jnp.concatenate([pos, neg]))
    return out[: pos.shape[0]], out[pos.shape[0] :]


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
    finite (every parameter finite).
    """
    s = config.discriminator
    batch = int(s.batch_size)
    batches_per_pass = num_images // batch
    settings = pair_settings(s)
    dtype = compute_dtype(config)
    root = jax.random.key(config.seed)
    data_key, pair_key, gamma_key = (jax.random.fold_in(root, i) for i in (3, 4, 5))
    two_passes = s.norm == "batch_transductive"
    sharded = parallel.batch_sharding(mesh)

    def step_fn(state, images, neighbours, step):
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
            s_pos, s_neg = _forward(model, pos, neg, two_passes)
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


def init_state(config: Any, spe: int, mesh: Mesh):
    """(graphdef, optimiser, replicated initial state) for ``config`` (``spe`` steps per epoch)."""
    graphdef, params, stats = split_model(build_discriminator(config))
    tx = make_optimizer(config.discriminator, spe)
    state = {"params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    return graphdef, tx, parallel.replicate(state, mesh)


def heldout_report(
    graphdef, state, encoder, test: ImageSet | None, config: Any, mesh: Mesh
) -> dict:
    """Mean pair score s on held-out positive vs negative pairs (inference mode).

    Pairs are sampled from ``test`` as in training (neighbourhoods among the test images by the
    encoder's features), in up to HELDOUT_MAX_BATCHES batches of ``discriminator.batch_size``.
    Returns heldout_mean_s_pos, heldout_mean_s_neg, heldout_pair_auroc (positives ranked above
    negatives) and heldout_pairs; {} without a test set.
    """
    s = config.discriminator
    ndev = mesh.devices.size
    hb = min(int(s.batch_size), len(test) if test is not None else 0) // ndev * ndev
    if test is None or hb < 2:
        return {}
    dtype = compute_dtype(config)
    feats = compute_features(
        *encoder, test.images, mesh=mesh, batch_size=int(s.feature_batch_size), dtype=dtype
    )
    k = min(int(s.neighbours), len(test) - 1)
    neighbours = parallel.replicate(
        semantic_neighbourhoods(feats, k, normalized=True, mesh=mesh), mesh
    )
    images = parallel.replicate(test.images, mesh)
    settings = pair_settings(s)
    key = jax.random.fold_in(jax.random.key(config.seed), 6)

    @jax.jit
    def scores(params, stats, images, neighbours, idx, b):
        pairs = sample_pairs(jax.random.fold_in(key, b), images, neighbours, idx, settings, dtype)
        model = nnx.merge(graphdef, params, stats)
        model.eval()
        pos = stack_pair(pairs["ref_pos"], pairs["partner_pos"])
        neg = stack_pair(pairs["ref_neg"], pairs["partner_neg"])
        s_pos, s_neg = _forward(model, pos, neg, two_passes=True)
        return pair_score(s_pos), pair_score(s_neg)

    order = np.random.default_rng(int(config.seed)).permutation(len(test))
    pos, neg = [], []
    for b in range(min(len(test) // hb, HELDOUT_MAX_BATCHES)):
        idx = parallel.replicate(order[b * hb : (b + 1) * hb].astype(np.int32), mesh)
        p, n = scores(state["params"], state["batch_stats"], images, neighbours, idx, b)
        pos.append(np.asarray(p))
        neg.append(np.asarray(n))
    pos, neg = np.concatenate(pos), np.concatenate(neg)
    return {
        "heldout_mean_s_pos": float(pos.mean()),
        "heldout_mean_s_neg": float(neg.mean()),
        "heldout_pair_auroc": float(ood_metrics(pos, neg)["auroc"]),
        "heldout_pairs": int(pos.size),
    }


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
    parallel.check_divisible(batch, mesh, "discriminator.batch_size")
    if batch > len(train):
        raise SemsadError(
            f"discriminator.batch_size={batch} is larger than the {len(train)} training images; "
            f"lower it."
        )
    pair_settings(s)  # unknown variant / preset -> SemsadError before any work
    encoder = load_encoder(workdir, config, mesh)  # SemsadError: missing or mismatched encoder
    stage_dir = os.path.join(workdir, STAGE)
    identity = discriminator_identity(config)
    meta = check_stage_identity(stage_dir, identity, STAGE, overwrite)
    if overwrite and meta is not None:
        move_aside(stage_dir)
        meta = None
    bank = build_bank(config, workdir, train, mesh=mesh)
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
    restored = ckpts.restore(state)
    start = 0
    if restored is not None:
        state, start = restored
        log.info("resuming discriminator from step %d of %d", start, total)
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


@partial(jax.jit, static_argnames=("graphdef", "dtype"))
def _score(graphdef, params, batch_stats, refs, partners, dtype):
    model = nnx.merge(graphdef, params, batch_stats)
    model.eval()
    return pair_score(model(stack_pair(to_float(refs, dtype), to_float(partners, dtype))))


def discriminator_scores(
    graphdef: nnx.GraphDef,
    params: dict,
    batch_stats: dict,
    refs_u8: np.ndarray,
    partners_u8: np.ndarray,
    *,
    mesh: Mesh,
    batch_size: int = 500,
    dtype: Any = jnp.float32,
) -> np.ndarray:
    """Pair scores s(reference, partner) in inference mode: float32 [N].

    Args:
      refs_u8, partners_u8: uint8 [N, H, W, 3] (at evaluation: the training neighbour and the test
        image). Scored in padded batches of ``batch_size`` sharded over ``mesh``.
    With ``norm="batch_transductive"`` a score depends on the rest of its batch (batch statistics),
    as in the authors' evaluation; with the other norms it does not.
    """

    fn = lambda refs, partners: _score(graphdef, params, batch_stats, refs, partners, dtype)
    out = map_batched(fn, (refs_u8, partners_u8), mesh=mesh, batch_size=batch_size)
    return np.asarray(out, np.float32).reshape(len(refs_u8))
