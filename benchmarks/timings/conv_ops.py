"""Each convolution of the ResNet's training step alone, in XLA and in PyTorch: forward, input
gradient and weight gradient timed separately, side by side.

    python -m benchmarks conv_ops --width=16 --image-size=16 --batch=512 --torch-threads=2

The minimal reproduction of where XLA:CPU (not semsad-jax) bounds a training row: for every
distinct convolution of the CIFAR ResNet (:func:`benchmarks.timings.conv_impl.conv_shapes`), the
milliseconds (wall, median) of y = conv(x, w), dL/dx and dL/dw given dL/dy, as XLA computes them
for :class:`semsad_jax.models.Conv` with ``--conv-impl`` (``jax.vjp`` of the module, so the
weight gradient is whatever the model's backward pass runs) and as PyTorch's
``aten.convolution_backward`` (oneDNN) computes them, each on the same threads. ``total`` weights
each row by how often the network has it. No model, no BatchNorm, no optimizer: the convolutions only.
"""

from __future__ import annotations

import argparse

from benchmarks.timing import machine_info, markdown_table, time_call, write_json
from benchmarks.timings.conv_impl import conv_shapes

PARTS = ("fwd", "dx", "dw")


def jax_times(shape: dict, batch: int, impl: str, repeats: int) -> dict:
    """{part: wall ms} of one convolution in JAX (``models.Conv`` with ``impl``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from semsad_jax.models.resnet import _conv

    k, s = shape["kernel"], shape["stride"]
    x = jax.random.normal(jax.random.key(0), (batch, shape["size"], shape["size"], shape["cin"]))
    conv = _conv(shape["cin"], shape["cout"], k, s, jnp.float32, nnx.Rngs(0), impl)
    graphdef, params = nnx.split(conv)
    apply = lambda p, x: nnx.merge(graphdef, p)(x)
    dy = jax.random.normal(jax.random.key(1), jax.eval_shape(apply, params, x).shape)
    fns = {
        "fwd": jax.jit(apply),
        "dx": jax.jit(lambda p, x, dy: jax.vjp(lambda x: apply(p, x), x)[1](dy)[0]),
        "dw": jax.jit(lambda p, x, dy: jax.vjp(lambda p: apply(p, x), p)[1](dy)[0]),
    }
    out = {}
    for part, fn in fns.items():
        call = (lambda fn=fn: fn(params, x)) if part == "fwd" else (lambda fn=fn: fn(params, x, dy))
        out[part] = time_call(call, warmup=1, repeats=repeats).median_s * 1e3
    return out


def torch_times(shape: dict, batch: int, repeats: int) -> dict:
    """{part: wall ms} of the same convolution in PyTorch (NCHW, ``aten.convolution_backward``)."""
    import torch

    k, s, p = shape["kernel"], shape["stride"], shape["kernel"] // 2
    x = torch.randn(batch, shape["cin"], shape["size"], shape["size"])
    w = torch.randn(shape["cout"], shape["cin"], k, k) * 0.1
    dy = torch.randn_like(torch.nn.functional.conv2d(x, w, stride=s, padding=p))

    def backward(mask):
        return torch.ops.aten.convolution_backward(
            dy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
        )

    fns = {
        "fwd": lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p),
        "dx": lambda: backward([True, False, False]),
        "dw": lambda: backward([False, True, False]),
    }
    sync = lambda _: None
    return {
        part: time_call(fn, warmup=1, repeats=repeats, sync=sync).median_s * 1e3
        for part, fn in fns.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=18)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--in-channels", type=int, default=3, help="3 = encoder, 6 = discriminator")
    p.add_argument("--batch", type=int, default=512, help="images per call (encoder: 2 views)")
    p.add_argument("--conv-impl", default="auto", help="models.Conv impl: auto, xla or matmul")
    p.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    if not args.no_torch and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    rows = []
    for shape in conv_shapes(args.depth, args.width, args.image_size, args.in_channels):
        r = dict(shape)
        ours = jax_times(shape, args.batch, args.conv_impl, args.repeats)
        r |= {f"jax_{k}_ms": round(v, 2) for k, v in ours.items()}
        if not args.no_torch:
            theirs = torch_times(shape, args.batch, args.repeats)
            r |= {f"torch_{k}_ms": round(v, 2) for k, v in theirs.items()}
            r["ratio"] = round(sum(theirs.values()) / sum(ours.values()), 2)
        rows.append(r)
    frameworks = ("jax",) if args.no_torch else ("jax", "torch")
    total = {"size": "total (x count)"}
    for fw in frameworks:
        for part in PARTS:
            total[f"{fw}_{part}_ms"] = round(
                sum(r[f"{fw}_{part}_ms"] * r["count"] for r in rows), 1
            )
    if not args.no_torch:
        total["ratio"] = round(
            sum(total[f"torch_{q}_ms"] for q in PARTS) / sum(total[f"jax_{q}_ms"] for q in PARTS), 2
        )
    columns = [("size", "input px"), ("cin", "in"), ("cout", "out"), ("kernel", "k")]
    columns += [("stride", "stride"), ("count", "count")]
    columns += [(f"{fw}_{q}_ms", f"{fw} {q}") for fw in frameworks for q in PARTS]
    if not args.no_torch:
        columns.append(("ratio", "torch / jax time"))
    print(markdown_table([*rows, total], columns))
    print(f"(wall ms per call, median; batch {args.batch}, float32, conv_impl {args.conv_impl})")
    result = {"args": vars(args), "machine": machine_info(), "rows": rows, "total": total}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
