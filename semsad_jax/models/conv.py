"""``Conv``: ``nnx.Conv`` with the same parameters, computed by XLA or as patches @ kernel.

XLA:CPU's convolution is slow where the kernel is larger than the output map (benchmarks/
PROFILING.md); ``impl="auto"`` computes exactly those layers (and the 3- / 6-channel stems) as a
matmul on single-device CPU and keeps XLA's convolution everywhere else.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from semsad_jax.errors import SemsadError

__all__ = ["CONV_IMPLS", "Conv", "use_matmul_conv"]

CONV_IMPLS = ("auto", "xla", "matmul")


class Conv(nnx.Conv):
    """``nnx.Conv`` (same parameters, same checkpoints) that can run as patches @ kernel.

    ``impl``: ``"xla"`` = ``lax.conv_general_dilated``; ``"matmul"`` = the kh*kw shifted (strided)
    slices of the padded input concatenated on channels, ``[B*Ho*Wo, kh*kw*C] @ [kh*kw*C, O]``;
    ``"auto"`` = matmul where XLA's CPU convolution is slow (:func:`use_matmul_conv`), else xla.
    Only for this module's own setup (2-D, no bias, no dilation, no groups, explicit padding).
    """

    def __init__(self, *args, impl: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        check_choice("conv_impl", impl, CONV_IMPLS)
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        strides = self.strides
        sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
        (ph0, ph1), (pw0, pw1) = self.padding
        h_out = (x.shape[1] + ph0 + ph1 - kh) // sh + 1
        w_out = (x.shape[2] + pw0 + pw1 - kw) // sw + 1
        if self.impl == "xla" or (
            self.impl == "auto" and not use_matmul_conv(h_out, w_out, self.kernel_size, x.shape[3])
        ):
            return super().__call__(x)
        x = x.astype(self.dtype)
        xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
        taps = [
            xp[:, i : i + sh * (h_out - 1) + 1 : sh, j : j + sw * (w_out - 1) + 1 : sw, :]
            for i in range(kh)
            for j in range(kw)
        ]
        patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
        kernel = self.kernel[...].astype(self.dtype).reshape(-1, self.out_features)
        out = jnp.einsum("bhwk,ko->bhwo", patches, kernel, preferred_element_type=jnp.float32)
        return out.astype(self.dtype)


def use_matmul_conv(h_out: int, w_out: int, kernel_size: tuple[int, int], in_ch: int) -> bool:
    """Whether ``impl="auto"`` computes a convolution as patches @ kernel (CPU backend only).

    XLA:CPU's convolution is slow, up to 70x in forward + backward, when the kernel is larger
    than the output map (3x3 on the 2x2 / 1x1 last stage of 16 px CIFAR inputs); stems (3 channels
    for h, 6 for s) are slightly faster as a matmul. Measured by benchmarks/conv_impl.py
    (benchmarks/PROFILING.md). GPU and TPU convolutions are kept, and so are those of several
    CPU devices: there, a step with the matmul form that XLA:CPU (jax 0.10.2) loads back from the
    persistent compilation cache can deadlock in its all-gathers (seen with 4 fake CPU devices).
    """
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        return False
    return min(h_out, w_out) < max(kernel_size) or in_ch <= 8


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """SemsadError naming the config key unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise SemsadError(
            f"Unknown ResNet {name} {value!r}; set encoder.{name} / discriminator.{name} to one "
            f"of {', '.join(choices)}."
        )
