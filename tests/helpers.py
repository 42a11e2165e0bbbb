"""Small helpers shared by the tests (not part of the package)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import types
from pathlib import Path

import numpy as np
from flax import nnx

from semsad_jax import parallel
from semsad_jax.configs import smoke
from semsad_jax.data import DataSets
from semsad_jax.models import build
from semsad_jax.train import discriminator as discriminator_stage
from semsad_jax.train import encoder as encoder_stage
from semsad_jax.train import step
from semsad_jax.train.stage import StageContext
from semsad_jax.workdir.layout import Workdir, run_identities
from semsad_jax.workdir.restore import restore_network


def config(**eval_fields):
    """The smoke config with ``eval`` fields overridden (the config of the ``smoke_*`` fixtures)."""
    c = smoke.get_config()
    for key, value in eval_fields.items():
        c.eval[key] = value
    return c


def copy_of(workdir, destination) -> str:
    """A private copy of ``workdir`` at ``destination`` (without its lock file)."""
    destination = str(destination)
    shutil.copytree(str(workdir), destination, ignore=shutil.ignore_patterns(".lock"))
    return destination


def read_text(path) -> str:
    return Path(path).read_text()


def read_json(path):
    return json.loads(Path(path).read_text())


def load_set(config, spec: str):
    """The images of ``spec`` at the config's image size (as a run loads them)."""
    return DataSets(config.data, config.seed).load(spec)


def load_train_set(config):
    return DataSets(config.data, config.seed).train()


def load_test_set(config):
    return DataSets(config.data, config.seed).test()


def context(config, workdir, *, mesh=None, overwrite=False) -> StageContext:
    """The StageContext ``semsad_jax.run`` builds for ``config`` and ``workdir``."""
    return StageContext(
        workdir=Workdir(str(workdir)),
        mesh=mesh or parallel.make_mesh(),
        seed=int(config.seed),
        dtype=config.dtype,
        progress=bool(config.progress),
        tensorboard=bool(config.tensorboard),
        overwrite=overwrite,
        placement=str(config.data.get("placement", "auto")),
    )


def identities(config) -> dict:
    return run_identities(config)


@contextlib.contextmanager
def sigterm_after_step(monkeypatch, stage_module, step: int):
    """Inside: ``stage_module.make_train_step``'s steps send this process SIGTERM after ``step``
    (the stage saves a checkpoint and raises ``Interrupted``); the real one is back afterwards."""
    real = stage_module.make_train_step

    def interrupted(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def wrapped(state, images, i):
            out = step_fn(state, images, i)
            if int(i) == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return wrapped

    monkeypatch.setattr(stage_module, "make_train_step", interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(stage_module, "make_train_step", real)


def tiny_config(kind: str) -> types.SimpleNamespace:
    """A tiny config section: ``"encoder"`` or ``"discriminator"`` (ResNet-18, width 4)."""
    if kind == "encoder":
        return types.SimpleNamespace(
            depth=18, width=4, norm="batch", head="mlp", out_dim=8, conv_impl="auto"
        )
    return types.SimpleNamespace(
        depth=18,
        width=4,
        activation="elu",
        norm="batch",
        head="linear",
        out_dim=1,
        conv_impl="auto",
    )


def train_encoder(config, workdir, train, test=None, **ctx):
    """The encoder stage as ``run`` calls it; returns its stage.json."""
    return encoder_stage.train_encoder(
        config.encoder,
        context(config, workdir, **ctx),
        train,
        test,
        identity=identities(config)["encoder"],
        feature_batch_size=int(config.discriminator.feature_batch_size),
    )


def load_encoder(workdir, config, mesh=None):
    """(graphdef, params, batch_stats) of the finished encoder in ``workdir``."""
    return restore_network(
        workdir, "encoder", config.encoder, identities(config)["encoder"], dtype=config.dtype,
        mesh=mesh,
    )  # fmt: skip


def train_discriminator(config, workdir, train, test=None, **ctx):
    """The discriminator stage as ``run`` calls it (encoder restored first; ``test`` defaults to
    ``data.test``, the held-out pairs of the report)."""
    ids = identities(config)
    test = load_test_set(config) if test is None else test
    stage_ctx = context(config, workdir, **ctx)
    return discriminator_stage.train_discriminator(
        config.discriminator,
        stage_ctx,
        train,
        load_encoder(workdir, config, mesh=stage_ctx.mesh),
        test,
        identity=ids["discriminator"],
        encoder_identity=ids["encoder"],
    )


def load_discriminator(workdir, config, mesh=None):
    return restore_network(
        workdir, "discriminator", config.discriminator, identities(config)["discriminator"],
        dtype=config.dtype, mesh=mesh,
    )  # fmt: skip


def init_state(kind: str, config, steps_per_epoch: int, mesh):
    """(graphdef, optimiser, replicated initial state) of the ``kind`` network of ``config``."""
    section = config[kind]
    return step.init_state(
        build(kind, section, seed=config.seed, dtype=config.dtype), section, steps_per_epoch, mesh
    )


# ---- references computed by hand: plain nnx calls and numpy, none of the package's scoring code ----


def apply_by_hand(network, inputs) -> np.ndarray:
    """A restored (graphdef, params, batch_stats) network applied in inference mode: plain nnx."""
    model = nnx.merge(*network)
    model.eval()
    return np.asarray(model(np.asarray(inputs, np.float32)), np.float64)


def unit_rows(x) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def features_by_hand(encoder, images_u8) -> np.ndarray:
    """L2-normalised encoder outputs h of uint8 images (inference mode, pixels / 255)."""
    return unit_rows(apply_by_hand(encoder, images_u8.astype(np.float32) / 255.0))


def pair_scores_by_hand(discriminator, refs_u8, partners_u8) -> np.ndarray:
    """s(reference, partner): the summed logits of the pair stacked on channels (reference first)."""
    pairs = np.concatenate([refs_u8, partners_u8], axis=-1).astype(np.float32) / 255.0
    return apply_by_hand(discriminator, pairs).sum(axis=1)


def semsad_by_hand(encoder, discriminator, bank_images, images, *, k: int = 1, average: int = 1):
    """SemSAD by hand: (scores [N], neighbour indices [N, k], cosine similarities [N, k]).

    The bank's features are recomputed from its images; the neighbours are the plain-numpy cosine
    top-k; the score is s(bank image, image) of the nearest training image (the paper), or its mean
    over the ``average`` nearest (``eval.score_neighbours``)."""
    sims = features_by_hand(encoder, images) @ features_by_hand(encoder, bank_images).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, : max(k, average)]
    scores = np.mean(
        [
            pair_scores_by_hand(discriminator, bank_images[order[:, j]], images)
            for j in range(average)
        ],
        axis=0,
    )
    return scores, order[:, :k], np.take_along_axis(sims, order[:, :k], axis=1)
