"""CIFAR ResNet-18/34 in Flax NNX: the encoder h and the pair discriminator s.

Architecture (He et al. 2016, BasicBlock) as torchvision ``resnet18`` / ``resnet34`` with the CIFAR
stem: a 3x3 stride-1 convolution (no bias) + norm + activation and no max-pool; four stages of
widths ``w, 2w, 4w, 8w`` with strides ``1, 2, 2, 2``; a 1x1 convolution + norm projection shortcut
where the shape changes; global average pooling; then the head. Inputs are NHWC.
Two CPU extensions, off by default: ``depth=10`` (one block per stage) and ``stem_stride=2`` (a 32 px
image costs what a 16 px one does: the stem reads every pixel, the stages see 16 x 16 maps).
Neither changes a parameter's shape at a given depth.

Norms (``norm=``):

* ``"batch"``: BatchNorm, torch's momentum 0.1 (flax ``momentum=0.9``), eps 1e-5. Batch statistics
  in ``model.train()`` mode, running statistics in ``model.eval()`` mode. (Like flax, the running
  variance is updated with the biased batch variance; torch uses the unbiased one.)
* ``"batch_transductive"``: :class:`BatchStatNorm`, batch statistics in train AND eval mode and no
  running statistics at all (the authors' discriminator: a test image's output depends on its batch).
* ``"group"``: GroupNorm, eps 1e-5, :func:`group_count` groups (32 for >= 64 channels).

Parameters are float32; ``dtype`` is the compute dtype (float32 or bfloat16); outputs are float32.
``conv_impl`` (:class:`Conv`) only chooses how a convolution is computed, never its parameters.
Initialisation follows torchvision: Kaiming-normal (fan_out) convolutions, norm scale 1 / bias 0
(no zero-init of the last norm of a block), torch's default uniform init for the linear layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from semsad_jax.errors import SemsadError
from semsad_jax.models.conv import CONV_IMPLS, Conv, check_choice

STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # 10: an extension (CPU)
STAGE_STRIDES = (1, 2, 2, 2)
ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}  # ELU with alpha 1.
NORMS = ("batch", "group", "batch_transductive")
HEADS = ("linear", "mlp", "none")  # "none": __call__ returns the pooled features
COMPUTE_DTYPES = ("float32", "bfloat16")
BN_MOMENTUM = 0.9  # flax convention: running = 0.9 * running + 0.1 * batch (torch momentum 0.1).
NORM_EPS = 1e-5


def _flat_draw(sample, key, shape, dtype):
    """``sample(key, (n,))`` drawn flat at a power-of-two size, then sliced and reshaped.

    Same distribution as drawing ``shape`` directly, but XLA compiles a 1-D power-of-two draw far
    faster than a 4-D one (seconds per kernel shape on CPU), and few sizes are shared by all shapes.
    """
    size = math.prod(shape)
    bucket = 1 << max(size - 1, 0).bit_length()
    return sample(key, (bucket,), dtype)[:size].reshape(shape)


def _conv_init(key, shape, dtype=jnp.float32):
    """torchvision's kaiming_normal_(mode="fan_out", relu): N(0, 2 / (kh * kw * out)); HWIO."""
    std = math.sqrt(2.0 / (math.prod(shape[:-2]) * shape[-1]))
    return _flat_draw(jax.random.normal, key, shape, dtype) * std


@functools.cache
def _uniform_init(bound: float):
    """U(-bound, bound): torch nn.Linear's weight and bias init with bound 1 / sqrt(fan_in).

    One function per bound (cached): the graph definitions of two models built alike stay equal
    (Flax 0.12.0 keeps the initialiser in the GraphDef), so they share compiled steps.
    """

    def init(key, shape, dtype=jnp.float32):
        draw = lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound)
        return _flat_draw(draw, key, shape, dtype)

    return init


def group_count(channels: int) -> int:
    """GroupNorm groups for ``channels``: ``gcd(channels, min(32, channels // 2))``, at least 1.

    32 groups (the GroupNorm paper's default) at the standard widths 64..512; at tiny test widths
    every group still holds >= 2 channels (4 -> 2 groups, 8 -> 4, 16 -> 8, 32 -> 16); the gcd keeps
    it a divisor of odd widths (80 -> 16).
    """
    return math.gcd(channels, min(32, max(1, channels // 2)))


def canonical_dtype(dtype: Any) -> jnp.dtype:
    """``"float32"`` / ``"bfloat16"`` / a jnp dtype -> jnp dtype; SemsadError for anything else."""
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in COMPUTE_DTYPES:
        raise SemsadError(
            f"Unsupported compute dtype {dtype!r}; set --config.dtype to 'float32' or 'bfloat16'."
        )
    return resolved


class BatchStatNorm(nnx.Module):
    """BatchNorm that always normalises with the statistics of the current batch (transductive).

    Has a learnable scale and bias (``nnx.Param``) but no running statistics, so ``model.eval()``
    does not change it. Statistics are computed in float32 over all axes but the last.
    Input ``[..., C]`` any float dtype -> same shape, compute ``dtype``.
    """

    def __init__(
        self, num_features: int, *, epsilon: float = NORM_EPS, dtype=jnp.float32, rngs: nnx.Rngs
    ):
        del rngs  # Deterministic init (scale 1, bias 0); kept for a uniform norm signature.
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(x.ndim - 1))
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=axes)
        var = jnp.maximum(jnp.mean(jnp.square(x32), axis=axes) - jnp.square(mean), 0.0)
        mul = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        return ((x32 - mean) * mul + self.bias[...]).astype(self.dtype)


def _make_norm(kind: str, channels: int, dtype, rngs: nnx.Rngs) -> nnx.Module:
    if kind == "batch":
        return nnx.BatchNorm(
            channels,
            momentum=BN_MOMENTUM,
            epsilon=NORM_EPS,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
    if kind == "group":
        return nnx.GroupNorm(
            channels,
            num_groups=group_count(channels),
            epsilon=NORM_EPS,
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )
    return BatchStatNorm(channels, dtype=dtype, rngs=rngs)


def _conv(
    in_ch: int, out_ch: int, kernel: int, stride: int, dtype, rngs: nnx.Rngs, impl: str = "auto"
) -> Conv:
    pad = kernel // 2  # torch padding: 1 for 3x3 (symmetric, unlike 'SAME' at stride 2), 0 for 1x1.
    return Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_conv_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
        impl=impl,
    )


def _linear(in_features: int, out_features: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    bound = 1.0 / math.sqrt(in_features)
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=_uniform_init(bound),
        bias_init=_uniform_init(bound),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """ResNet BasicBlock: conv3x3-norm-act-conv3x3-norm + shortcut, then act. NHWC."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        activation: str,
        norm: str,
        dtype,
        rngs: nnx.Rngs,
        conv_impl: str = "auto",
    ):
        self.conv1 = _conv(in_ch, out_ch, 3, stride, dtype, rngs, conv_impl)
        self.norm1 = _make_norm(norm, out_ch, dtype, rngs)
        self.conv2 = _conv(out_ch, out_ch, 3, 1, dtype, rngs, conv_impl)
        self.norm2 = _make_norm(norm, out_ch, dtype, rngs)
        self.has_projection = stride != 1 or in_ch != out_ch
        if self.has_projection:
            self.proj_conv = _conv(in_ch, out_ch, 1, stride, dtype, rngs, conv_impl)
            self.proj_norm = _make_norm(norm, out_ch, dtype, rngs)
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        y = act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = self.proj_norm(self.proj_conv(x)) if self.has_projection else x
        return act(y + shortcut)


class ResNet(nnx.Module):
    """CIFAR ResNet-18/34 with a linear or MLP head (and, with ``aux_out``, a second linear head).

    ``__call__``: ``x`` float ``[B, H, W, in_channels]`` (NHWC, any float dtype) -> ``[B, out_dim]``
    float32. ``features``: the pooled ``[B, 8 * width]`` float32 features before the head.
    BatchNorm mode: ``model.train()`` (batch statistics, running statistics updated) or
    ``model.eval()`` (running statistics); a freshly built model is in train mode.
    """

    def __init__(
        self,
        *,
        depth: int = 18,
        width: int = 64,
        in_channels: int = 3,
        activation: str = "relu",
        norm: str = "batch",
        head: str = "linear",
        out_dim: int = 128,
        dtype=jnp.float32,
        conv_impl: str = "auto",
        stem_stride: int = 1,
        aux_out: int = 0,
        rngs: nnx.Rngs,
    ):
        if depth not in STAGE_BLOCKS:
            raise SemsadError(
                f"Unsupported ResNet depth {depth!r}; set encoder.depth / discriminator.depth to "
                "18 or 34 (or 10, the one-block-per-stage extension)."
            )
        if stem_stride not in (1, 2):
            raise SemsadError(
                f"Unsupported stem stride {stem_stride!r}; set encoder.stem_stride to 1 (the CIFAR "
                "stem) or 2."
            )
        check_choice("activation", activation, tuple(ACTIVATIONS))
        check_choice("norm", norm, NORMS)
        check_choice("head", head, HEADS)
        check_choice("conv_impl", conv_impl, CONV_IMPLS)
        for name, value in (("width", width), ("in_channels", in_channels), ("out_dim", out_dim)):
            if not isinstance(value, int) or value < 1:
                raise SemsadError(
                    f"ResNet {name} must be a positive integer, got {value!r}; fix the "
                    f"encoder / discriminator section of the config."
                )
        dtype = canonical_dtype(dtype)
        self.dtype = dtype
        self.activation = activation
        self.feature_dim = 8 * width
        self.stem_conv = _conv(in_channels, width, 3, stem_stride, dtype, rngs, conv_impl)
        self.stem_norm = _make_norm(norm, width, dtype, rngs)
        blocks = []
        in_ch = width
        for stage, (n_blocks, stride) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_STRIDES)):
            out_ch = width * 2**stage
            for i in range(n_blocks):
                blocks.append(
                    BasicBlock(
                        in_ch,
                        out_ch,
                        stride if i == 0 else 1,
                        activation=activation,
                        norm=norm,
                        dtype=dtype,
                        rngs=rngs,
                        conv_impl=conv_impl,
                    )
                )
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.has_hidden = head == "mlp"
        self.has_head = head != "none"
        if self.has_hidden:
            self.head_hidden = _linear(self.feature_dim, self.feature_dim, dtype, rngs)
        if self.has_head:
            self.head = _linear(self.feature_dim, out_dim, dtype, rngs)
        self.has_aux = bool(aux_out)
        if self.has_aux:  # a second linear head on the pooled features (CSI's shift classifier)
            self.aux_head = _linear(self.feature_dim, int(aux_out), dtype, rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, in_channels]`` -> globally pooled ``[B, 8 * width]`` float32 features."""
        y = x.astype(self.dtype)
        y = ACTIVATIONS[self.activation](self.stem_norm(self.stem_conv(y)))
        for block in self.blocks:
            y = block(y)
        return jnp.mean(y.astype(jnp.float32), axis=(1, 2))

    def project(self, pooled: jax.Array) -> jax.Array:
        """The head on pooled features: ``model(x) == model.project(model.features(x))``."""
        if not self.has_head:
            return pooled
        y = pooled.astype(self.dtype)
        if self.has_hidden:
            y = ACTIVATIONS[self.activation](self.head_hidden(y))
        return self.head(y).astype(jnp.float32)

    def aux(self, pooled: jax.Array) -> jax.Array:
        """The auxiliary linear head (``aux_out`` > 0) on pooled features: ``[B, aux_out]`` float32."""
        if not self.has_aux:
            raise SemsadError("this ResNet has no auxiliary head; build it with aux_out > 0.")
        return self.aux_head(pooled.astype(self.dtype)).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.project(self.features(x))


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param`` leaves); works on ``nnx.eval_shape`` models too."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(leaf.shape) for leaf in leaves)
