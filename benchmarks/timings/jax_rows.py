"""The JAX rows of ``throughput.py``: each function times one hot path and returns a result row.

``args`` is throughput's parsed namespace (sizes, ``warmup`` / ``repeats`` / ``calls``); images
are uint8 [N, S, S, 3] host arrays; ``mesh`` is the 1-D data mesh the rows run on.
"""

from __future__ import annotations

import numpy as np

from benchmarks.timing import row, time_call, time_interleaved


def encoder_config(args, dtype: str, augment: str = "encoder"):
    from configs import default

    c = default.get_config()
    c.dtype = dtype
    c.data.image_size = args.image_size
    e = c.encoder
    e.depth, e.width, e.batch_size, e.head = args.depth, args.width, args.batch, args.head
    e.temperature, e.augment = 0.5, augment
    d = c.discriminator
    d.depth, d.width, d.batch_size = args.disc_depth, args.disc_width, args.disc_batch
    d.norm = args.disc_norm
    e.conv_impl = d.conv_impl = args.conv_impl
    return c


def bench_encoder(args, dtype: str, images: np.ndarray, mesh, augment: str) -> dict:
    import jax

    from semsad_jax import parallel
    from semsad_jax.models import build
    from semsad_jax.train.encoder import make_train_step
    from semsad_jax.train.step import StepSetup, init_state

    config = encoder_config(args, dtype, augment)
    model = build("encoder", config.encoder, seed=config.seed, dtype=dtype)
    graphdef, tx, state = init_state(model, config.encoder, len(images) // args.batch, mesh)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    step_fn = make_train_step(
        StepSetup(graphdef, tx, shardings, config.encoder, len(images), mesh, config.seed, dtype)
    )
    on_device = parallel.replicate(images, mesh)
    holder = {"state": state, "step": 0}

    def call():
        holder["state"], metrics = step_fn(holder["state"], on_device, np.int32(holder["step"]))
        holder["step"] += 1
        return metrics["loss"]

    t = time_call(call, **timing_kwargs(args))
    name = "encoder_train" if augment == "encoder" else "encoder_step_no_aug"
    return row(
        name,
        dtype,
        2 * args.batch,
        "views",
        t,
        width=args.width,
        batch=args.batch,
        image_size=args.image_size,
        depth=args.depth,
        conv_impl=config.encoder.conv_impl,
    )


def bench_placement(args, dtype: str, images: np.ndarray, mesh) -> list[dict]:
    """``encoder_train_device`` and ``encoder_train_host``: the real encoder step with the set on
    every device, and with each step's rows gathered on the host (prefetched one step ahead),
    timed in alternating rounds of at least 4 steps (so the host's prefetch overlaps its own
    steps, as in training)."""
    import jax

    from semsad_jax.models import build
    from semsad_jax.train.encoder import bound_train_step
    from semsad_jax.train.step import StepSetup, init_state

    config = encoder_config(args, dtype)
    calls, steps = {}, []
    for placement in ("device", "host"):
        model = build("encoder", config.encoder, seed=config.seed, dtype=dtype)
        graphdef, tx, state = init_state(model, config.encoder, len(images) // args.batch, mesh)
        shardings = jax.tree.map(lambda x: x.sharding, state)
        setup = StepSetup(
            graphdef, tx, shardings, config.encoder, len(images), mesh, config.seed, dtype,
            placement=placement,
        )  # fmt: skip
        step = bound_train_step(setup, images)
        steps.append(step)
        holder = {"state": state, "step": 0}

        def call(step=step, holder=holder):
            holder["state"], metrics = step(holder["state"], np.int32(holder["step"]))
            holder["step"] += 1
            return metrics["loss"]

        calls[placement] = call
    timing = timing_kwargs(args) | {"calls": max(args.calls, 4)}
    timings = time_interleaved(calls, **timing)
    for step in steps:
        step.close()
    return [
        row(
            f"encoder_train_{placement}",
            dtype,
            2 * args.batch,
            "views",
            t,
            placement=placement,
            width=args.width,
            batch=args.batch,
            image_size=args.image_size,
        )
        for placement, t in timings.items()
    ]


def bench_discriminator(args, dtype: str, images: np.ndarray, mesh) -> dict:
    from benchmarks.timings import disc_step

    config = encoder_config(args, dtype)
    call, pairs, source = disc_step.make_benchmark_call(config, images, mesh)
    t = time_call(call, **timing_kwargs(args))
    return row(
        "discriminator_train",
        dtype,
        pairs,
        "pairs",
        t,
        width=args.disc_width,
        batch=args.disc_batch,
        depth=args.disc_depth,
        norm=args.disc_norm,
        step_source=source,
    )


def bench_augment(args, dtype: str, images: np.ndarray, mesh) -> dict:
    import jax
    import jax.numpy as jnp

    from semsad_jax import parallel
    from semsad_jax.augment import augment_batch

    n = args.aug_batch
    batch = parallel.shard_batch(images[np.arange(n) % len(images)], mesh)
    root = jax.random.key(0)
    counter = iter(range(1 << 30))
    call = lambda: augment_batch(
        jax.random.fold_in(root, next(counter)), batch, "encoder", dtype=jnp.dtype(dtype)
    )
    return row("augment", dtype, n, "images", time_call(call, **timing_kwargs(args)))


def bench_bank(args, dtype: str, images: np.ndarray, mesh) -> dict:
    import jax.numpy as jnp

    from semsad_jax.method.features import compute_features
    from semsad_jax.models import build, split_model

    config = encoder_config(args, dtype)
    graphdef, params, stats = split_model(build("encoder", config.encoder, seed=0, dtype=dtype))
    bank_images = images[np.arange(args.bank_images) % len(images)]
    call = lambda: compute_features(
        graphdef,
        params,
        stats,
        bank_images,
        mesh=mesh,
        batch_size=config.discriminator.feature_batch_size,
        dtype=jnp.dtype(dtype),
    )
    timing = timing_kwargs(args) | {"calls": 1, "warmup": 1}  # one call = the whole bank
    return row("feature_bank", dtype, len(bank_images), "images", time_call(call, **timing))


def random_bank(size: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """float32 [size, dim] unit rows (random Gaussian directions)."""
    bank = np.random.default_rng(seed).normal(size=(size, dim)).astype(np.float32)
    return bank / np.linalg.norm(bank, axis=1, keepdims=True)


def bench_knn(args, dtype: str, bank: np.ndarray, mesh, with_sklearn: bool) -> list[dict]:
    """``knn_top4`` on the whole bank; with ``with_sklearn`` (float32 only) also the pair
    ``knn_top4_vs_sklearn`` (ours, scikit-learn) on its first ``args.sklearn_bank`` rows."""
    import jax.numpy as jnp

    from semsad_jax.method.neighbours import top_k_cosine

    k = 4
    data = bank if dtype == "float32" else np.asarray(jnp.asarray(bank, jnp.dtype(dtype)))
    call = lambda: top_k_cosine(data, data, k, exclude_self=True, mesh=mesh)
    rows = [row("knn_top4", dtype, len(bank), "queries", time_call(call, **timing_kwargs(args)))]
    if not with_sklearn or dtype != "float32":
        return rows
    from sklearn.neighbors import NearestNeighbors

    sub = bank[: args.sklearn_bank]
    ours_call = lambda: top_k_cosine(sub, sub, k, exclude_self=True, mesh=mesh)
    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine")
    sk_call = lambda: search.fit(sub).kneighbors(return_distance=True)  # X=None: self excluded
    t_ours = time_call(ours_call, **timing_kwargs(args))
    t_sk = time_call(sk_call, sync=lambda _: None, warmup=0, repeats=min(args.repeats, 3))
    _, ours = ours_call()
    _, theirs = sk_call()
    same = {
        "identical_rows": float(np.mean(np.all(ours == theirs, axis=1))),
        "identical_sets": float(np.mean(np.all(np.sort(ours, 1) == np.sort(theirs, 1), axis=1))),
    }
    name = "knn_top4_vs_sklearn"
    rows.append(row(name, dtype, len(sub), "queries", t_ours, **same))
    rows.append(row(name, dtype, len(sub), "queries", t_sk, framework="sklearn", **same))
    return rows


def timing_kwargs(args) -> dict:
    return dict(warmup=args.warmup, repeats=args.repeats, calls=args.calls)
