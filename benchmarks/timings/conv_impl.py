"""Every convolution of a ResNet, timed as XLA's convolution and as patches @ kernel.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python -m benchmarks conv_impl --width=16 --image-size=16 --batch=512

For each distinct convolution of the CIFAR ResNet (stem, each block's two 3x3 and its 1x1
projection; ``count`` = how often it occurs), the forward pass and forward + backward (kernel
gradient, and input gradient except for the stem, whose input is the images) of :class:`semsad_jax.models.Conv` with ``impl="xla"`` and ``impl="matmul"``, in
milliseconds per call (median CPU time of this process; wall time in the JSON), plus which one
``impl="auto"`` picks on this backend (:func:`semsad_jax.models.use_matmul_conv`). The totals weight
each row by its count: the convolution part of one training step's forward + backward.
"""

from __future__ import annotations

import argparse

from benchmarks.timing import machine_info, markdown_table, time_call, write_json

IMPLS = ("xla", "matmul")


def conv_shapes(depth: int, width: int, image_size: int, in_channels: int) -> list[dict]:
    """Distinct convolutions of the CIFAR ResNet as {size (input), cin, cout, kernel, stride, count}."""
    from semsad_jax.models.resnet import STAGE_BLOCKS, STAGE_STRIDES

    shapes: dict[tuple, int] = {}

    def add(size, cin, cout, kernel, stride):
        key = (size, cin, cout, kernel, stride)
        shapes[key] = shapes.get(key, 0) + 1

    stem = (image_size, in_channels, width, 3, 1)
    add(*stem)
    size, cin = image_size, width
    for stage, (blocks, stride) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_STRIDES)):
        cout = width * 2**stage
        for i in range(blocks):
            s = stride if i == 0 else 1
            out_size = (size + 2 - 3) // s + 1
            add(size, cin, cout, 3, s)
            add(out_size, cout, cout, 3, 1)
            if s != 1 or cin != cout:
                add(size, cin, cout, 1, s)
            size, cin = out_size, cout
    return [  # input_grad: training differentiates every input but the images (the stem's)
        dict(
            size=k[0], cin=k[1], cout=k[2], kernel=k[3], stride=k[4], count=n, input_grad=k != stem
        )
        for k, n in shapes.items()
    ]


def time_shape(shape: dict, batch: int, dtype: str, repeats: int) -> dict:
    """Forward and forward + backward milliseconds (CPU and wall) of one shape, per impl."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semsad_jax.models import use_matmul_conv
    from semsad_jax.models.resnet import _conv

    k, s = shape["kernel"], shape["stride"]
    x = jax.random.normal(jax.random.key(0), (batch, shape["size"], shape["size"], shape["cin"]))
    x = x.astype(dtype)
    out = dict(shape)
    for impl in IMPLS:
        conv = _conv(shape["cin"], shape["cout"], k, s, jnp.dtype(dtype), nnx.Rngs(0), impl)
        graphdef, params = nnx.split(conv)
        apply = lambda p, x, g=graphdef: nnx.merge(g, p)(x)
        fwd = jax.jit(apply)
        loss = lambda p, x, f=apply: jnp.sum(f(p, x).astype(jnp.float32) ** 2)
        both = jax.jit(jax.grad(loss, (0, 1) if shape.get("input_grad", True) else 0))
        for name, fn in (("fwd", fwd), ("fwd_bwd", both)):
            t = time_call(lambda fn=fn, p=params: fn(p, x), warmup=1, repeats=repeats)
            out[f"{impl}_{name}_ms"] = round(t.cpu_median_s * 1e3, 2)
            out[f"{impl}_{name}_wall_ms"] = round(t.median_s * 1e3, 2)
    h_out = (shape["size"] + 2 * (k // 2) - k) // s + 1
    out["auto"] = "matmul" if use_matmul_conv(h_out, h_out, (k, k), shape["cin"]) else "xla"
    out["auto_fwd_bwd_ms"] = out[f"{out['auto']}_fwd_bwd_ms"]
    out["speedup"] = round(out["xla_fwd_bwd_ms"] / max(out["auto_fwd_bwd_ms"], 1e-9), 2)
    return out


def totals(rows: list[dict]) -> dict:
    """Count-weighted forward + backward milliseconds per impl and for auto."""
    tot = {"size": "total (x count)"}
    for key in ("xla_fwd_bwd_ms", "matmul_fwd_bwd_ms", "auto_fwd_bwd_ms"):
        tot[key] = round(sum(r[key] * r["count"] for r in rows), 1)
    tot["speedup"] = round(tot["xla_fwd_bwd_ms"] / tot["auto_fwd_bwd_ms"], 2)
    return tot


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--in-channels", type=int, default=3, help="3 = encoder, 6 = discriminator")
    p.add_argument("--batch", type=int, default=512, help="images per call (encoder: 2 views)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    shapes = conv_shapes(args.depth, args.width, args.image_size, args.in_channels)
    rows = [time_shape(s, args.batch, args.dtype, args.repeats) for s in shapes]
    columns = [
        ("size", "input px"),
        ("cin", "in"),
        ("cout", "out"),
        ("kernel", "k"),
        ("stride", "stride"),
        ("count", "count"),
        ("xla_fwd_ms", "xla fwd"),
        ("xla_fwd_bwd_ms", "xla fwd+bwd"),
        ("matmul_fwd_ms", "matmul fwd"),
        ("matmul_fwd_bwd_ms", "matmul fwd+bwd"),
        ("auto", "auto picks"),
        ("speedup", "xla / auto"),
    ]
    total = totals(rows)
    print(markdown_table([*rows, total], columns))
    print(f"(CPU ms per call, median; batch {args.batch}, {args.dtype})")
    result = {"args": vars(args), "machine": machine_info(), "rows": rows, "total": total}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
