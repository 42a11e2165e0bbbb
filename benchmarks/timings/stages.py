"""Where the encoder step's time goes: each stage jitted and timed on its own.

    python -m benchmarks stages --batch=256 --width=16 --image-size=16

Stages of one step (batch B, two views): ``gather`` (the epoch permutation and ``images[idx]``),
``augment`` (two views, encoder preset), ``forward`` (loss only, train mode), ``forward_backward``
(``value_and_grad``), ``optimizer`` (Adam update + apply), and the real fused ``full_step``.
``--augment-ops`` adds the augmentation pipeline op by op (crop, + flip, + colour jitter,
+ grayscale): each row is the cumulative pipeline, so differences are the op costs.
Sum of the parts vs the fused step shows what XLA's fusion saves (or loses).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.timing import machine_info, markdown_table, time_call, write_json

AUGMENT_STEPS = ("crop", "flip", "jitter", "grayscale")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--augment-ops", action="store_true")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def _config(args):
    from semsad_jax.configs import default

    c = default.get_config()
    c.dtype = args.dtype
    c.data.image_size = args.image_size
    e = c.encoder
    e.depth, e.width, e.batch_size, e.head, e.temperature = (
        args.depth,
        args.width,
        args.batch,
        "linear",
        0.5,
    )
    return c


def stage_functions(args, mesh, num_images: int) -> tuple[dict, dict]:
    """({stage name: (jitted fn, args tuple)}, context) for the encoder step's stages."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from semsad_jax import parallel
    from semsad_jax.augment import augment_batch
    from semsad_jax.method.losses import contrastive_loss
    from semsad_jax.models import build, model_stats
    from semsad_jax.train.encoder import make_train_step
    from semsad_jax.train.step import StepSetup, init_state

    config = _config(args)
    batch, dtype = args.batch, jnp.dtype(args.dtype)
    model = build("encoder", config.encoder, seed=config.seed, dtype=args.dtype)
    graphdef, tx, state = init_state(model, config.encoder, num_images // batch, mesh)
    rng = np.random.default_rng(0)
    images = parallel.replicate(
        rng.integers(0, 256, (num_images, args.image_size, args.image_size, 3), np.uint8), mesh
    )
    key = jax.random.key(0)

    @jax.jit
    def gather(images, step):
        order = jax.random.permutation(jax.random.fold_in(key, step // 4), num_images)
        return images[jax.lax.dynamic_slice(order, ((step % 4) * batch,), (batch,))]

    @jax.jit
    def augment(x, step):
        k = jax.random.fold_in(key, step)
        v1 = augment_batch(jax.random.fold_in(k, 0), x, "encoder", dtype=dtype)
        v2 = augment_batch(jax.random.fold_in(k, 1), x, "encoder", dtype=dtype)
        return jnp.concatenate([v1, v2])

    def loss_fn(params, stats, views):
        model = nnx.merge(graphdef, params, stats)
        model.train()
        z = model(views).astype(jnp.float32)
        return contrastive_loss("infonce", z[:batch], z[batch:], 0.5), model_stats(model)

    forward = jax.jit(lambda p, s, v: loss_fn(p, s, v)[0])
    forward_backward = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

    @jax.jit
    def optimizer(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    x = gather(images, np.int32(0))
    views = augment(x, np.int32(0))
    (_, _), grads = forward_backward(state["params"], state["batch_stats"], views)
    p, s, o = state["params"], state["batch_stats"], state["opt_state"]
    stages = {
        "gather": (gather, (images, np.int32(1))),
        "augment": (augment, (x, np.int32(1))),
        "forward": (forward, (p, s, views)),
        "forward_backward": (forward_backward, (p, s, views)),
        "optimizer": (optimizer, (grads, o, p)),
    }
    shardings = jax.tree.map(lambda a: a.sharding, state)
    setup = StepSetup(
        graphdef, tx, shardings, config.encoder, num_images, mesh, config.seed, args.dtype
    )
    step_fn = make_train_step(setup)
    return stages, {"step_fn": step_fn, "state": state, "images": images, "x": x}


def augment_op_functions(args, x) -> dict:
    """{"crop", "+flip", ...: (fn, args)}: the encoder pipeline built up op by op."""
    import jax
    import jax.numpy as jnp

    from semsad_jax.augment import AugmentSpec, augment_batch

    none = dict(crop_scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    full = dict(crop_scale=(0.08, 1.0), flip_p=0.5, jitter_p=0.8, gray_p=0.2)
    keys = ("crop_scale", "flip_p", "jitter_p", "gray_p")
    out, dtype = {}, jnp.dtype(args.dtype)
    for i, name in enumerate(AUGMENT_STEPS):
        spec = AugmentSpec(**(none | {k: full[k] for k in keys[: i + 1]}))
        label = name if i == 0 else "+" + name
        out[f"augment {label}"] = (
            jax.jit(lambda k, x, spec=spec: augment_batch(k, x, spec, dtype=dtype)),
            (jax.random.key(1), x),
        )
    return out


def _stage_row(name: str, t) -> dict:
    return {
        "stage": name,
        "median_ms": round(t.median_s * 1e3, 2),
        "cpu_ms": round(t.cpu_median_s * 1e3, 2),
    }


def run(args) -> dict:
    from semsad_jax import parallel

    mesh = parallel.make_mesh()
    stages, ctx = stage_functions(args, mesh, 4 * args.batch)
    timing = dict(warmup=args.warmup, repeats=args.repeats)
    rows = []
    for name, (fn, fn_args) in stages.items():
        t = time_call(lambda fn=fn, fn_args=fn_args: fn(*fn_args), **timing)
        rows.append(_stage_row(name, t))
    holder = {"state": ctx["state"], "step": 0}

    def full():
        holder["state"], metrics = ctx["step_fn"](
            holder["state"], ctx["images"], np.int32(holder["step"])
        )
        holder["step"] += 1
        return metrics["loss"]

    t = time_call(full, **timing)
    parts = [r for r in rows if r["stage"] != "forward"]
    rows.append(
        {"stage": "sum of parts (no 'forward')"}
        | {k: round(sum(r[k] for r in parts), 2) for k in ("median_ms", "cpu_ms")}
    )
    rows.append(_stage_row("full_step (fused)", t))
    if args.augment_ops:
        for name, (fn, fn_args) in augment_op_functions(args, ctx["x"]).items():
            t = time_call(lambda fn=fn, fn_args=fn_args: fn(*fn_args), **timing)
            rows.append(_stage_row(name + " (one view)", t))
    full_cpu = rows[-1 - (4 if args.augment_ops else 0)]["cpu_ms"]
    for r in rows:
        r["share_of_step_cpu"] = round(r["cpu_ms"] / full_cpu, 3) if full_cpu else None
    result = {"machine": machine_info(), "sizes": vars(args), "rows": rows}
    print(
        f"# Encoder step stages: batch {args.batch}, width {args.width}, {args.image_size}px, "
        f"{args.dtype}, load {result['machine']['load_avg_1m']}\n"
    )
    print(
        markdown_table(
            rows,
            [
                ("stage", "stage"),
                ("median_ms", "wall ms"),
                ("cpu_ms", "CPU ms"),
                ("share_of_step_cpu", "share of full step (CPU)"),
            ],
        )
    )
    write_json(args.out, result)
    return result


def main(argv=None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
