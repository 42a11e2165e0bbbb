"""Optimisers and learning-rate schedules of the two training stages (from their config sections)."""

from __future__ import annotations

from typing import Any

import optax

from semsad_jax.errors import SemsadError

__all__ = ["make_optimizer", "make_schedule"]


def make_schedule(cfg: Any, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule (per step) from a stage config section.

    ``schedule``: "constant" | "cosine" | "piecewise" (``lr_boundaries`` in epochs, ``lr_scales``
    multiplied in cumulatively, optax semantics); ``warmup_epochs`` of linear warm-up for any.
    """
    lr = float(cfg.learning_rate)
    kind = cfg.schedule
    total = max(1, int(cfg.epochs) * steps_per_epoch)
    if kind == "constant":
        sched = optax.constant_schedule(lr)
    elif kind == "cosine":
        sched = optax.cosine_decay_schedule(lr, total)
    elif kind == "piecewise":
        bounds = [int(b) * steps_per_epoch for b in cfg.lr_boundaries]
        scales = [float(s) for s in cfg.lr_scales]
        if len(bounds) != len(scales):
            raise SemsadError("lr_boundaries and lr_scales must have the same length.")
        sched = optax.piecewise_constant_schedule(lr, dict(zip(bounds, scales)))
    else:
        raise SemsadError(f"unknown schedule {kind!r}; use constant, cosine or piecewise.")
    warmup = int(cfg.warmup_epochs) * steps_per_epoch
    if warmup:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched


def make_optimizer(cfg: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Optax optimiser from ``cfg.optimizer`` / ``learning_rate`` / ``weight_decay``.

    "adam" and "amsgrad" use coupled L2 like ``torch.optim.Adam(weight_decay=...)`` (the paper's and
    the authors' setting); "adamw" decoupled decay; "sgd" momentum 0.9 with coupled decay.
    ``trunk_lr_scale`` (absent = 1; the siamese discriminator's extension): the updates of the
    parameters under the top-level key ``trunk`` are multiplied by it (0 = frozen).
    """
    tx = _base_optimizer(cfg, steps_per_epoch)
    scale = float(getattr(cfg, "trunk_lr_scale", 1.0))
    if scale == 1.0:
        return tx
    if scale < 0:
        raise SemsadError(f"trunk_lr_scale={scale} must be >= 0 (0 freezes the trunk).")
    labels = lambda params: {key: "trunk" if key == "trunk" else "rest" for key in params}
    trunk = optax.multi_transform({"trunk": optax.scale(scale), "rest": optax.identity()}, labels)
    return optax.chain(tx, trunk)


def _base_optimizer(cfg: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    sched = make_schedule(cfg, steps_per_epoch)
    wd = float(cfg.weight_decay)
    name = cfg.optimizer
    decay = [optax.add_decayed_weights(wd)] if wd else []
    if name == "adam":
        return optax.chain(*decay, optax.scale_by_adam(), optax.scale_by_learning_rate(sched))
    if name == "amsgrad":
        return optax.chain(*decay, optax.scale_by_amsgrad(), optax.scale_by_learning_rate(sched))
    if name == "adamw":
        return optax.adamw(sched, weight_decay=wd)
    if name == "sgd":
        return optax.chain(*decay, optax.sgd(sched, momentum=0.9))
    raise SemsadError(f"unknown optimizer {name!r}; use adam, amsgrad, adamw or sgd.")
