"""A discriminator training step to time: the real one when available, else a faithful stand-in.

The stand-in does the work of one SemSAD discriminator step on ``B = discriminator.batch_size``
references drawn from the on-device set: reference = un-augmented image, positive partner = a
``t_pos`` view of the same image, negative partner = a ``t_neg`` view of another image; the 6-channel
positive and negative pairs go through the discriminator in two forward passes (as the authors do),
then SemSAD's gamma-weighted objective and AMSGrad. Items per call = 2B pairs. (Replacing a fraction
mu of the positives by semantic neighbours costs one gather and is left out.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from semsad_jax import parallel
from semsad_jax.augment import augment_batch
from semsad_jax.losses import discriminator_loss, sample_gamma
from semsad_jax.models import make_discriminator
from semsad_jax.trainer import make_optimizer, model_stats, split_model


def make_stand_in_step(config: Any, num_images: int, mesh) -> tuple[Callable, dict]:
    """(jitted step(state, images_uint8 [N,H,W,3], step) -> (state, loss), initial state)."""
    d = config.discriminator
    dtype = jnp.dtype(config.dtype)
    batch = int(d.batch_size)
    graphdef, params, stats = split_model(make_discriminator(d, rngs=nnx.Rngs(0), dtype=dtype))
    tx = make_optimizer(d, max(num_images // batch, 1))
    state = parallel.replicate({"params": params, "batch_stats": stats,
                                "opt_state": tx.init(params)}, mesh)
    sharded = parallel.batch_sharding(mesh)
    root = jax.random.key(0)

    def step_fn(state, images, step):
        key = jax.random.fold_in(root, step)
        k_idx, k_pos, k_neg, k_gamma, k_other = jax.random.split(key, 5)
        idx = jax.random.randint(k_idx, (batch,), 0, num_images)
        other = jax.random.randint(k_other, (batch,), 0, num_images)
        x = jax.lax.with_sharding_constraint(images[idx], sharded)
        y = jax.lax.with_sharding_constraint(images[other], sharded)
        ref = augment_batch(k_idx, x, "t_org", dtype=dtype)
        pos = augment_batch(k_pos, x, "t_pos", dtype=dtype)
        neg = augment_batch(k_neg, y, "t_neg", dtype=dtype)
        gamma = sample_gamma(k_gamma, d.gamma, float(d.gamma_max))

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"])
            model.train()
            s_pos = model(jnp.concatenate([ref, pos], axis=-1))
            s_neg = model(jnp.concatenate([ref, neg], axis=-1))
            return discriminator_loss(s_pos, s_neg, gamma), model_stats(model)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        return {"params": params, "batch_stats": new_stats, "opt_state": opt_state}, loss

    return jax.jit(step_fn, donate_argnums=(0,)), state


def make_benchmark_call(config: Any, images: np.ndarray, mesh) -> tuple[Callable, int, str]:
    """(call() -> array to block on, pairs per call, "stand-in" or the real step's module)."""
    step_fn, state = make_stand_in_step(config, len(images), mesh)
    on_device = parallel.replicate(images, mesh)
    holder = {"state": state, "step": 0}

    def call():
        holder["state"], loss = step_fn(holder["state"], on_device, np.int32(holder["step"]))
        holder["step"] += 1
        return loss

    return call, 2 * int(config.discriminator.batch_size), "stand-in"
