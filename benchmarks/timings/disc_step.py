"""The real discriminator training step (:func:`semsad_jax.train.discriminator.make_train_step`), ready to time.

Each call is one step on ``B = discriminator.batch_size`` images drawn from an on-device set: B
positive and B negative pairs (views made on the device by :mod:`semsad_jax.pairs`), forward and
backward (one pass for ``norm="batch"``, two for ``"batch_transductive"``), AMSGrad. Items per
call = 2B pairs. The semantic neighbourhoods are random (any valid int32 [N, k] costs the same).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from benchmarks.timing import xla_gflop
from semsad_jax import parallel
from semsad_jax.models import build
from semsad_jax.train import discriminator as disc_stage
from semsad_jax.train.step import StepSetup, init_state


def random_neighbours(num_images: int, k: int, seed: int = 0) -> np.ndarray:
    """int32 [N, k] neighbour indices, row i never containing i."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, num_images, (num_images, k))
    return ((np.arange(num_images)[:, None] + offsets) % num_images).astype(np.int32)


def make_benchmark_call(
    config: Any, images: np.ndarray, mesh
) -> tuple[Callable, int, str, Callable[[], float | None]]:
    """(call() -> loss to block on, pairs per call, the step's module name, gflop() -> GFLOP of
    one step from XLA's cost analysis, :func:`benchmarks.timing.xla_gflop`)."""
    num = len(images)
    section = config.discriminator
    batch = int(section.batch_size)
    model = build("discriminator", section, seed=config.seed, dtype=config.dtype)
    graphdef, tx, state = init_state(model, section, max(num // batch, 1), mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = disc_stage.make_train_step(
        StepSetup(graphdef, tx, shardings, section, num, mesh, config.seed, config.dtype)
    )
    on_device = parallel.replicate(images, mesh)
    neighbours = parallel.replicate(
        random_neighbours(num, int(config.discriminator.neighbours)), mesh
    )
    holder = {"state": state, "step": 0}

    def call():
        holder["state"], metrics = step_fn(
            holder["state"], on_device, neighbours, np.int32(holder["step"])
        )
        holder["step"] += 1
        return metrics["loss"]

    def gflop():
        step = np.int32(holder["step"])
        return xla_gflop(step_fn, holder["state"], on_device, neighbours, step)

    return call, 2 * batch, "semsad_jax.train.discriminator", gflop
