"""What runs inside the jitted steps of both stages (batch indices, rows, the gradient step), the
record they are compiled from (:class:`StepSetup`) and the initial state.

Each stage's step is ``step_fn(state, *data, step, root_key)``: the batch is drawn with
:func:`batch_indices` from a per-pass permutation keyed by ``fold_in(data_key, pass)``, augmented
with keys from ``fold_in(key, step)``, and applied with :func:`gradient_step`; so the step's result
depends only on (seed, step) and a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from semsad_jax import parallel
from semsad_jax.errors import SemsadError
from semsad_jax.models.build import split_model
from semsad_jax.train.optim import make_optimizer

__all__ = [
    "StepSetup",
    "batch_indices",
    "batch_rows",
    "check_batch_size",
    "gradient_step",
    "init_state",
    "take_rows",
    "tree_is_finite",
]


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """Everything a stage's ``make_train_step`` compiles its jitted step from.

    Attributes:
      graphdef: the model's graph; tx: its optimiser; state_sharding: shardings of the state
      {"params", "batch_stats", "opt_state"} (replicated over ``mesh``); section: the stage's
      config section; num_images: training images the batches are drawn from; mesh: the device
      mesh; seed: the run's seed (an argument of the compiled step, see
      :func:`semsad_jax.train.stage.seed_key`);
      dtype: the compute dtype; placement: where the training set lives, "device" or "host"
      (resolved from ``data.placement``, see :mod:`semsad_jax.parallel.feed`).
    """

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    state_sharding: Any
    section: Any
    num_images: int
    mesh: Mesh
    seed: int = 0
    dtype: Any = "float32"
    placement: str = "device"


def batch_indices(key: jax.Array, step: jax.Array, num_images: int, batch: int) -> jax.Array:
    """int32 [batch]: the ``step``-th batch of a per-pass permutation of ``range(num_images)``.

    Pass ``p = step // (num_images // batch)`` shuffles with ``fold_in(key, p)``; the batches of
    one pass are disjoint (the last ``num_images % batch`` images of a pass are skipped).
    """
    per_pass = num_images // batch
    data_pass, within = step // per_pass, step % per_pass
    order = jax.random.permutation(jax.random.fold_in(key, data_pass), num_images)
    return jax.lax.dynamic_slice(order, (within * batch,), (batch,))


def batch_rows(setup: StepSetup):
    """``(step, root) -> (batch indices,)``: the rows of a stage whose step reads one batch of
    ``section.batch_size`` images (encoder, rotation), in the jitted step and on the host."""
    num_images, batch = setup.num_images, int(setup.section.batch_size)
    return lambda step, root: (batch_indices(jax.random.fold_in(root, 1), step, num_images, batch),)


def take_rows(data: Any, indices: tuple[jax.Array, ...], host: bool) -> tuple[jax.Array, ...]:
    """The step's batch rows at ``indices``: gathered from the whole set ``data`` (on the device),
    or ``data`` itself with ``host`` (the rows the host gathered at the same indices)."""
    return tuple(data) if host else tuple(data[i] for i in indices)


def tree_is_finite(tree: Any) -> jax.Array:
    """Scalar bool: every floating leaf of ``tree`` is finite."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.floating)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def gradient_step(
    tx: optax.GradientTransformation,
    state: dict,
    loss_fn: Callable[[dict], tuple[jax.Array, tuple[dict, Any]]],
) -> tuple[dict, jax.Array, Any, jax.Array]:
    """One optimiser step on ``state`` = {"params", "batch_stats", "opt_state"}.

    ``loss_fn(params) -> (loss, (new batch_stats, aux))``. Returns (new state, loss, aux, finite),
    ``finite`` = the loss and every new parameter are finite.
    """
    (loss, (stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "batch_stats": stats, "opt_state": opt_state}
    return new, loss, aux, tree_is_finite(params) & jnp.isfinite(loss)


def init_state(
    model: nnx.Module, section: Any, steps_per_epoch: int, mesh: Mesh
) -> tuple[nnx.GraphDef, optax.GradientTransformation, dict]:
    """(graphdef, optimiser of ``section``, initial state replicated over ``mesh``) of ``model``."""
    graphdef, params, stats = split_model(model)
    tx = make_optimizer(section, steps_per_epoch)
    state = {"params": params, "batch_stats": stats, "opt_state": tx.init(params)}
    return graphdef, tx, parallel.replicate(state, mesh)


def check_batch_size(batch_size: int, num_images: int, mesh: Mesh, key: str) -> None:
    """One-line SemsadError unless ``batch_size`` splits over the devices and fits the data."""
    parallel.check_divisible(batch_size, mesh, key)
    if batch_size > num_images:
        raise SemsadError(
            f"{key}={batch_size} is larger than the {num_images} training images; lower it."
        )
