"""The JAX rows of ``throughput.py``: each function times one hot path and returns a result row.

``args`` is throughput's parsed namespace (sizes, ``warmup`` / ``repeats`` / ``calls``); images
are uint8 [N, S, S, 3] host arrays; ``mesh`` is the 1-D data mesh the rows run on.

Every row also carries ``gflop_per_call`` and ``gflop_per_s`` (:func:`benchmarks.timing.with_flops`),
the useful work: XLA's cost analysis of the jitted function the row calls, lowered (not compiled)
for the whole mesh; the training steps and the bank are counted on a twin built with
``conv_impl="xla"`` (:func:`useful_args`), so the zero-padding taps that the patches @ kernel
convolutions multiply are left out. Rows that call a jitted function several times per call (the
feature bank's batches, the kNN search's query blocks) count one batch / block and scale it to the
row's items, so batch padding is not counted either. The placement rows count their own steps.
:func:`matmul_peak` measures the GFLOP/s those rates are compared with.
"""

from __future__ import annotations

import numpy as np

from benchmarks.timing import row, significant, time_call, time_interleaved, with_flops, xla_gflop


def encoder_config(args, dtype: str, augment: str = "encoder"):
    from semsad_jax.configs import default

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


def _encoder_step(args, dtype: str, images: np.ndarray, mesh, augment: str):
    """(jitted step, its initial state) of the real encoder step at ``args`` on ``images``."""
    import jax

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
    return step_fn, state


def useful_args(args):
    """``args`` with ``conv_impl="xla"``: the FLOPs are counted on XLA's convolutions, which
    leave out the taps that fall on zero padding (the patches @ kernel form of ``auto`` / ``matmul``
    multiplies them too: work done, not useful work)."""
    import copy

    twin = copy.copy(args)
    twin.conv_impl = "xla"
    return twin


def bench_encoder(args, dtype: str, images: np.ndarray, mesh, augment: str) -> dict:
    from semsad_jax import parallel

    step_fn, state = _encoder_step(args, dtype, images, mesh, augment)
    on_device = parallel.replicate(images, mesh)
    holder = {"state": state, "step": 0}

    def call():
        holder["state"], metrics = step_fn(holder["state"], on_device, np.int32(holder["step"]))
        holder["step"] += 1
        return metrics["loss"]

    t = time_call(call, **timing_kwargs(args))
    twin, twin_state = _encoder_step(useful_args(args), dtype, images, mesh, augment)
    gflop = xla_gflop(twin, twin_state, on_device, np.int32(0))  # lowered only, not compiled
    name = "encoder_train" if augment == "encoder" else "encoder_step_no_aug"
    result = row(
        name,
        dtype,
        2 * args.batch,
        "views",
        t,
        width=args.width,
        batch=args.batch,
        image_size=args.image_size,
        depth=args.depth,
        conv_impl=args.conv_impl,
    )
    return with_flops(result, gflop)


def bench_placement(args, dtype: str, images: np.ndarray, mesh) -> list[dict]:
    """``encoder_train_device`` and ``encoder_train_host``: the real encoder step with the set on
    every device, and with each step's rows gathered on the host (prefetched one step ahead),
    timed in alternating rounds of at least 4 steps (so the host's prefetch overlaps its own
    steps, as in training). FLOPs: each step lowered with its own data (host: the batch rows)."""
    import jax

    from semsad_jax import parallel
    from semsad_jax.models import build
    from semsad_jax.train.encoder import bound_train_step
    from semsad_jax.train.step import StepSetup, init_state

    config = encoder_config(args, dtype)
    calls, steps, holders = {}, [], []
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
        holders.append(holder)

        def call(step=step, holder=holder):
            holder["state"], metrics = step(holder["state"], np.int32(holder["step"]))
            holder["step"] += 1
            return metrics["loss"]

        calls[placement] = call
    timing = timing_kwargs(args) | {"calls": max(args.calls, 4)}
    timings = time_interleaved(calls, **timing)
    size = (args.batch, args.image_size, args.image_size, 3)
    host_rows = (jax.ShapeDtypeStruct(size, np.uint8, sharding=parallel.batch_sharding(mesh)),)
    gflop = {}
    for placement, step, holder in zip(("device", "host"), steps, holders):
        data = step.data if placement == "device" else host_rows
        gflop[placement] = xla_gflop(
            step.jitted, holder["state"], data, *step.extra, np.int32(holder["step"])
        )
        step.close()
    return [
        with_flops(
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
            ),
            gflop[placement],
        )
        for placement, t in timings.items()
    ]


def bench_discriminator(args, dtype: str, images: np.ndarray, mesh) -> dict:
    from benchmarks.timings import disc_step

    config = encoder_config(args, dtype)
    call, pairs, source, _ = disc_step.make_benchmark_call(config, images, mesh)
    t = time_call(call, **timing_kwargs(args))
    twin = encoder_config(useful_args(args), dtype)
    _, _, _, gflop = disc_step.make_benchmark_call(twin, images, mesh)  # lowered only
    result = row(
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
    return with_flops(result, gflop())


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
    result = row("augment", dtype, n, "images", time_call(call, **timing_kwargs(args)))
    gflop = xla_gflop(augment_batch, root, batch, "encoder", dtype=jnp.dtype(dtype))
    return with_flops(result, gflop)


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
    result = row("feature_bank", dtype, len(bank_images), "images", time_call(call, **timing))
    twin = encoder_config(useful_args(args), dtype)
    gflop = bank_gflop(
        split_model(build("encoder", twin.encoder, seed=0, dtype=dtype)),
        bank_images.shape,
        config.discriminator.feature_batch_size,
        jnp.dtype(dtype),
        mesh,
    )
    return with_flops(result, gflop)


def bank_gflop(network: tuple, shape: tuple, batch_size: int, dtype, mesh) -> float | None:
    """GFLOP of ``compute_features`` on uint8 images of ``shape``: its jitted batch (the one
    ``features.map_batched`` pads every batch to), scaled to the images (padding not counted)."""
    import jax

    from semsad_jax import parallel
    from semsad_jax.method import features

    n = shape[0]
    size = features.round_batch(min(batch_size, max(n, 1)), mesh)
    sharding = parallel.batch_sharding(mesh)
    batch = jax.ShapeDtypeStruct((size, *shape[1:]), np.uint8, sharding=sharding)
    # the jitted function compute_features calls, with the arguments it passes (normalize, head)
    per_batch = xla_gflop(features._embed, *network, batch, True, dtype, "head")
    return per_batch * n / size if per_batch else None


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
    t = time_call(call, **timing_kwargs(args))
    rows = [with_flops(row("knn_top4", dtype, len(bank), "queries", t), knn_gflop(data, k, mesh))]
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
    gflop = knn_gflop(sub, k, mesh)
    rows.append(with_flops(row(name, dtype, len(sub), "queries", t_ours, **same), gflop))
    rows.append(row(name, dtype, len(sub), "queries", t_sk, framework="sklearn", **same))
    return rows


def knn_gflop(data: np.ndarray, k: int, mesh) -> float | None:
    """GFLOP of ``top_k_cosine(data, data, k, exclude_self=True, mesh=mesh)``: its jitted search
    of one block of queries against the bank (the blocks it makes at its default sizes), its
    scan's body (one bank chunk) counted once per chunk, scaled to the queries (padding not
    counted). The bank's normalisation (a few FLOPs per bank value) is left out."""
    import math

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from semsad_jax.method import neighbours
    from semsad_jax.parallel import DATA_AXIS

    n, dim = data.shape
    shards = mesh.shape[DATA_AXIS]
    block = -(-min(1024, n) // shards) * shards  # top_k_cosine's query_block, per device
    chunk = min(65536, n)  # its bank_chunk
    num_chunks = math.ceil(n / chunk)
    replicated = NamedSharding(mesh, PartitionSpec())
    bank_dtype = neighbours._bank_dtype(jnp.dtype(data.dtype))
    queries = jax.ShapeDtypeStruct(
        (block, dim), data.dtype, sharding=NamedSharding(mesh, PartitionSpec(DATA_AXIS, None))
    )
    bank_chunks = jax.ShapeDtypeStruct((num_chunks, chunk, dim), bank_dtype, sharding=replicated)
    per_block = xla_gflop(
        neighbours._block_top_k,
        queries,
        bank_chunks,
        jnp.int32(0),
        jnp.int32(n),
        k=k,
        normalize=True,
        exclude_self=True,
        out_sharding=replicated,
    )
    return per_block * num_chunks * n / block if per_block else None


def matmul_peak(mesh, dtype: str = "float32", size: int = 2048, repeats: int = 3) -> dict:
    """The measured matmul rate the rows' GFLOP/s are compared with: a jitted ``a @ b`` of
    ``[size x devices, size] @ [size, size]`` in ``dtype`` (JAX's default precision), the rows of
    ``a`` sharded over the mesh (``size``^3 per device), median of ``repeats`` timed calls after
    one warm-up. FLOPs: 2 m n k (``gflop_per_call``, XLA's count agrees)."""
    import jax
    import jax.numpy as jnp

    from semsad_jax import parallel

    devices = mesh.devices.size
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((size * devices, size), np.float32), jnp.dtype(dtype))
    b = jnp.asarray(rng.standard_normal((size, size), np.float32), jnp.dtype(dtype))
    a, b = parallel.shard_batch(a, mesh), parallel.replicate(b, mesh)
    matmul = jax.jit(jnp.matmul)
    t = time_call(lambda: matmul(a, b), warmup=1, repeats=repeats, calls=1)
    gflop = 2 * size**3 * devices / 1e9
    return {
        "dtype": dtype,
        "size": size,
        "devices": int(devices),
        "gflop_per_call": significant(gflop),
        "median_ms": round(t.median_s * 1e3, 3),
        "gflop_per_s": significant(gflop / t.median_s),
    }


def timing_kwargs(args) -> dict:
    return dict(warmup=args.warmup, repeats=args.repeats, calls=args.calls)
