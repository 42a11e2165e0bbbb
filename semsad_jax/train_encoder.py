"""Stage 1: the contrastive encoder h (``--mode=encoder``).

The whole training set lives on the device as uint8 (replicated); each step draws its batch from a
per-epoch permutation keyed by ``fold_in(seed, epoch)`` and augments two views with keys from
``fold_in(seed, step)``, all inside one jitted, state-donating step. So a run is reproducible, and
a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.augment import augment_batch, get_spec
from semsad_jax.checkpoints import StageCheckpoints, check_stage_identity, open_stage, write_json
from semsad_jax.data import ImageSet
from semsad_jax.errors import SemsadError
from semsad_jax.features import compute_features
from semsad_jax.losses import contrastive_loss
from semsad_jax.models import make_encoder
from semsad_jax.monitor import pixel_knn_accuracy, weighted_knn_accuracy
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

log = logging.getLogger(__name__)
STAGE = "encoder"
ARCH_KEYS = ("depth", "width", "norm", "head", "out_dim")


def compute_dtype(config: Any) -> jnp.dtype:
    name = config.get("dtype", "float32")
    if name not in ("float32", "bfloat16"):
        raise SemsadError(f"dtype={name!r} is not supported; use float32 or bfloat16.")
    return jnp.dtype(name)


def build_encoder(config: Any, seed: int | None = None) -> nnx.Module:
    """The encoder h described by ``config.encoder`` with fresh parameters."""
    seed = config.seed if seed is None else seed
    return make_encoder(config.encoder, rngs=nnx.Rngs(seed), dtype=compute_dtype(config))


def encoder_identity(config: Any) -> dict:
    """What must match for an encoder checkpoint to be resumed or reused."""
    ident = {f"encoder.{k}": config.encoder[k] for k in ARCH_KEYS}
    ident.update({"data.train": config.data.train, "data.image_size": config.data.image_size})
    return ident


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    config: Any,
    num_images: int,
    mesh: Mesh,
    state_sharding: Any,
):
    """The jitted encoder step ``(state, images_uint8 [N,H,W,3] replicated, step) -> (state, metrics)``.

    The state is donated. Metrics: ``loss`` and ``finite`` (every parameter finite).
    """
    enc = config.encoder
    batch = int(enc.batch_size)
    steps_per_epoch = num_images // batch
    spec = get_spec(enc.augment)
    dtype = compute_dtype(config)
    sharded = parallel.batch_sharding(mesh)

    def step_fn(state, images, step, root):
        data_key, aug_key = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
        epoch, within = step // steps_per_epoch, step % steps_per_epoch
        order = jax.random.permutation(jax.random.fold_in(data_key, epoch), num_images)
        idx = jax.lax.dynamic_slice(order, (within * batch,), (batch,))
        x = jax.lax.with_sharding_constraint(images[idx], sharded)
        key = jax.random.fold_in(aug_key, step)
        v1 = augment_batch(jax.random.fold_in(key, 0), x, spec, dtype=dtype)
        v2 = augment_batch(jax.random.fold_in(key, 1), x, spec, dtype=dtype)
        views = jax.lax.with_sharding_constraint(jnp.concatenate([v1, v2]), sharded)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            z = model(views).astype(jnp.float32)
            loss = contrastive_loss(enc.loss, z[:batch], z[batch:], float(enc.temperature))
            return loss, model_stats(model)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = {"params": params, "batch_stats": stats, "opt_state": opt_state}
        return new, {"loss": loss, "finite": tree_is_finite(params) & jnp.isfinite(loss)}

    rep = parallel.replicated(mesh)
    jitted = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(state_sharding, rep))
    return with_seed_key(jitted, config.seed, mesh)


def init_state(config: Any, steps_per_epoch: int, mesh: Mesh):
    """(graphdef, optimiser, replicated initial state) for ``config``."""
    graphdef, params, stats = split_model(build_encoder(config))
    tx = make_optimizer(config.encoder, steps_per_epoch)
    state = {"params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    return graphdef, tx, parallel.replicate(state, mesh)


def knn_report(
    graphdef, state, train: ImageSet, test: ImageSet | None, config: Any, mesh: Mesh
) -> dict:
    """Weighted kNN accuracy (cosine, k=config.encoder.knn_k) of test h features against train."""
    if test is None or train.labels is None or test.labels is None:
        return {}
    feats = partial(
        compute_features,
        graphdef,
        state["params"],
        state["batch_stats"],
        mesh=mesh,
        batch_size=config.discriminator.feature_batch_size,
        dtype=compute_dtype(config),
    )
    kw = dict(k=int(config.encoder.knn_k), temperature=float(config.encoder.knn_temperature))
    acc = weighted_knn_accuracy(
        feats(train.images), train.labels, feats(test.images), test.labels, **kw
    )
    return {"knn_accuracy": float(acc)}


def pixel_floor(train: ImageSet, test: ImageSet | None, config: Any) -> dict:
    if test is None or train.labels is None or test.labels is None:
        return {}
    kw = dict(k=int(config.encoder.knn_k), temperature=float(config.encoder.knn_temperature))
    return {
        "pixel_knn_accuracy": float(
            pixel_knn_accuracy(train.images, train.labels, test.images, test.labels, **kw)
        )
    }


def train_encoder(
    config: Any,
    workdir: str,
    train: ImageSet,
    test: ImageSet | None = None,
    *,
    mesh: Mesh | None = None,
    overwrite: bool = False,
) -> dict:
    """Trains (or resumes, or skips if finished) the encoder; returns the stage summary.

    Args:
      train: training images (uint8 [N,H,W,3]); labels unused except for the kNN monitor.
      test: optional labelled images for the kNN monitor.
    Returns:
      the summary also written to ``WORKDIR/encoder/stage.json`` (steps, minutes, kNN accuracies).
    """
    mesh = mesh or parallel.make_mesh()
    enc = config.encoder
    batch = int(enc.batch_size)
    check_batch_size(batch, len(train), mesh, "encoder.batch_size")
    stage_dir = os.path.join(workdir, STAGE)
    identity = encoder_identity(config)
    meta = open_stage(stage_dir, identity, STAGE, overwrite)
    steps_per_epoch = len(train) // batch
    total = int(enc.epochs) * steps_per_epoch
    if meta and meta.get("finished") and meta.get("total_steps") == total:
        log.info("encoder already trained (%d steps) in %s; reusing it", total, stage_dir)
        return meta

    graphdef, tx, state = init_state(config, steps_per_epoch, mesh)
    ckpts = StageCheckpoints(stage_dir, keep=int(enc.keep_checkpoints))
    state, start = resume(STAGE, ckpts, state, total)
    write_json(
        os.path.join(stage_dir, "stage.json"),
        {"identity": identity, "total_steps": total, "finished": False},
    )
    images = parallel.replicate(train.images, mesh)
    step_fn = make_train_step(
        graphdef, tx, config, len(train), mesh, jax.tree.map(lambda x: x.sharding, state)
    )

    def on_epoch_end(epoch: int, st) -> dict:
        every = int(enc.knn_every_epochs)
        if every and epoch % every == 0 and epoch < int(enc.epochs):
            return knn_report(graphdef, st, train, test, config, mesh)
        return {}

    t0 = time.time()
    state = run_loop(
        name=STAGE,
        train_step=lambda st, step: step_fn(st, images, step),
        state=state,
        start_step=start,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
        images_per_step=2 * batch,
        checkpoints=ckpts,
        writer=MetricsWriter(
            os.path.join(stage_dir, "metrics.jsonl"), config.get("tensorboard", False)
        ),
        log_every=int(enc.log_every_steps),
        checkpoint_every=int(enc.checkpoint_every_steps),
        progress=config.get("progress", True),
        on_epoch_end=on_epoch_end,
    )
    ckpts.close()
    summary = {
        "identity": identity,
        "total_steps": total,
        "finished": True,
        "train_minutes": round((time.time() - t0) / 60, 3),
        "num_train": len(train),
    }
    summary.update(knn_report(graphdef, state, train, test, config, mesh))
    summary.update(pixel_floor(train, test, config))
    write_json(os.path.join(stage_dir, "stage.json"), summary)
    if "knn_accuracy" in summary:
        log.info(
            "encoder kNN accuracy %.4f (raw-pixel kNN floor %.4f)",
            summary["knn_accuracy"],
            summary["pixel_knn_accuracy"],
        )
    return summary


def load_encoder(workdir: str, config: Any, mesh: Mesh | None = None):
    """(graphdef, params, batch_stats) of the finished encoder in ``workdir`` (restored from Orbax).

    Raises SemsadError when there is no encoder or it does not match ``config``.
    """
    mesh = mesh or parallel.make_mesh()
    stage_dir = os.path.join(workdir, STAGE)
    meta = check_stage_identity(stage_dir, encoder_identity(config), STAGE, overwrite=False)
    if meta is None or not meta.get("finished"):
        raise SemsadError(
            f"no trained encoder in {stage_dir}; run --mode=encoder with this --workdir first."
        )
    graphdef, _, state = init_state(config, 1, mesh)
    restored = StageCheckpoints(stage_dir, keep=int(config.encoder.keep_checkpoints)).restore(state)
    if restored is None:
        raise SemsadError(
            f"the encoder checkpoint in {stage_dir} is missing; rerun --mode=encoder."
        )
    state, _ = restored
    return graphdef, state["params"], state["batch_stats"]
