"""The real discriminator training step (:func:`train_discriminator.make_train_step`), ready to time.

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

from semsad_jax import parallel, train_discriminator


def random_neighbours(num_images: int, k: int, seed: int = 0) -> np.ndarray:
    """int32 [N, k] neighbour indices, row i never containing i."""
    rng = np.random.default_rng(seed)
    offsets = rng.integers(1, num_images, (num_images, k))
    return ((np.arange(num_images)[:, None] + offsets) % num_images).astype(np.int32)


def make_benchmark_call(config: Any, images: np.ndarray, mesh) -> tuple[Callable, int, str]:
    """(call() -> loss to block on, pairs per call, the step's module name)."""
    num = len(images)
    batch = int(config.discriminator.batch_size)
    graphdef, tx, state = train_discriminator.init_state(config, max(num // batch, 1), mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = train_discriminator.make_train_step(graphdef, tx, config, num, mesh, shardings)
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

    return call, 2 * batch, "semsad_jax.train_discriminator"
