"""CIFAR ResNet: torchvision parameter counts, a numpy reference forward pass, norms and modes."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tiny_config

from semsad_jax.errors import SemsadError
from semsad_jax.models import (
    ResNet,
    count_params,
    make_discriminator,
    make_encoder,
    use_matmul_conv,
)
from semsad_jax.models.resnet import BatchStatNorm, _conv, group_count

WIDTH = 4  # One tiny width and batch shape throughout, so compilations are shared between tests.
BATCH = 4


@nnx.jit
def _forward(model: ResNet, x: jax.Array) -> jax.Array:
    return model(x)


TORCHVISION_FC10 = {18: 11_173_962, 34: 21_282_122}  # CIFAR-stem resnet18/34, 512 -> 10 fc.


def _images(n: int = BATCH, channels: int = 3, size: int = 8, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(
        np.random.default_rng(seed).uniform(0, 1, (n, size, size, channels)), jnp.float32
    )


# ---- numpy reference (float64) ---------------------------------------------------------------


def _np_conv(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """NHWC conv with torch padding k // 2 on each side; kernel HWIO."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h_out = (x.shape[1] + 2 * pad - k) // stride + 1
    w_out = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, kernel.shape[3]))
    for i in range(k):
        for j in range(k):
            patch = xp[:, i : i + stride * h_out : stride, j : j + stride * w_out : stride, :]
            out += patch @ kernel[i, j]
    return out


def _np_norm(x: np.ndarray, norm, kind: str) -> np.ndarray:
    scale, bias = np.asarray(norm.scale[...], np.float64), np.asarray(norm.bias[...], np.float64)
    if kind == "group":
        b, h, w, c = x.shape
        g = group_count(c)
        xg = x.reshape(b, h, w, g, c // g)
        mean = xg.mean(axis=(1, 2, 4), keepdims=True)
        var = xg.var(axis=(1, 2, 4), keepdims=True)
        y = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape)
    else:  # batch statistics (train-mode BatchNorm and the transductive norm)
        y = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5)
    return y * scale + bias


def _np_act(x: np.ndarray, activation: str) -> np.ndarray:
    return np.maximum(x, 0) if activation == "relu" else np.where(x > 0, x, np.expm1(x))


def _np_resnet(model: ResNet, x: np.ndarray, kind: str, activation: str) -> np.ndarray:
    w = lambda conv: np.asarray(conv.kernel[...], np.float64)
    stem = _np_conv(x, w(model.stem_conv), model.stem_conv.strides)
    y = _np_act(_np_norm(stem, model.stem_norm, kind), activation)
    for block in model.blocks:
        stride = block.conv1.strides  # an int, as passed to nnx.Conv
        r = _np_act(_np_norm(_np_conv(y, w(block.conv1), stride), block.norm1, kind), activation)
        r = _np_norm(_np_conv(r, w(block.conv2), 1), block.norm2, kind)
        if block.has_projection:
            y = _np_norm(_np_conv(y, w(block.proj_conv), stride), block.proj_norm, kind)
        y = _np_act(r + y, activation)
    feats = y.mean(axis=(1, 2))
    if model.has_hidden:
        lin = model.head_hidden
        # the hidden layer uses the network's own activation (ELU in the discriminator)
        feats = _np_act(feats @ np.asarray(lin.kernel[...]) + np.asarray(lin.bias[...]), activation)
    return feats @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])


@pytest.mark.parametrize(
    "norm, activation, head, channels, depth, stem_stride",
    [
        ("batch", "relu", "linear", 3, 18, 1),
        ("group", "elu", "mlp", 6, 18, 1),
        ("batch_transductive", "elu", "linear", 6, 18, 1),
        # the CPU extensions: one block per stage, stride-2 stem
        ("batch", "relu", "mlp", 3, 10, 2),
    ],
)
def test_forward_matches_numpy_reference(norm, activation, head, channels, depth, stem_stride):
    model = ResNet(
        depth=depth,
        stem_stride=stem_stride,
        width=WIDTH,
        in_channels=channels,
        activation=activation,
        norm=norm,
        head=head,
        out_dim=5,
        rngs=nnx.Rngs(1),
    )
    x = _images(channels=channels, seed=2)
    out = _forward(model, x)
    assert out.shape == (BATCH, 5) and out.dtype == jnp.float32
    ref = _np_resnet(model, np.asarray(x, np.float64), norm, activation)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-3, atol=2e-4)


# ---- convolution implementations (same parameters, same results) ------------------------------


@pytest.mark.parametrize(
    "size, in_ch, out_ch, kernel, stride",
    [(8, 3, 4, 3, 1), (4, 4, 8, 3, 2), (2, 8, 8, 3, 1), (5, 4, 8, 3, 2), (4, 4, 8, 1, 2)],
)
def test_matmul_conv_matches_xla_conv_and_numpy(size, in_ch, out_ch, kernel, stride):
    convs = {
        impl: _conv(in_ch, out_ch, kernel, stride, jnp.float32, nnx.Rngs(3), impl)
        for impl in ("xla", "matmul")
    }
    x = _images(channels=in_ch, size=size, seed=4)
    ref = _np_conv(np.asarray(x, np.float64), np.asarray(convs["xla"].kernel[...]), stride)
    cotangent = jnp.asarray(np.random.default_rng(5).normal(size=ref.shape), jnp.float32)
    grads = {}
    for impl, conv in convs.items():
        graphdef, params = nnx.split(conv)
        y, vjp = jax.vjp(lambda x, p, g=graphdef: nnx.merge(g, p)(x), x, params)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
        grads[impl] = jax.tree.leaves(vjp(cotangent))  # d/dx, d/dkernel
    assert len(grads["xla"]) == 2
    for a, b in zip(grads["xla"], grads["matmul"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_conv_impls_share_parameters_and_outputs():
    """A model built with any conv_impl has the same state tree and computes the same function."""
    x = _images(channels=6, size=8, seed=6)
    outs, states = {}, {}
    for impl in ("xla", "matmul", "auto"):
        model = ResNet(depth=18, width=WIDTH, in_channels=6, conv_impl=impl, rngs=nnx.Rngs(1))
        states[impl] = nnx.state(model)
        outs[impl] = np.asarray(_forward(model, x))
    assert jax.tree.structure(states["xla"]) == jax.tree.structure(states["matmul"])
    for impl in ("matmul", "auto"):
        np.testing.assert_allclose(outs[impl], outs["xla"], rtol=1e-4, atol=1e-5)


def test_auto_conv_rule_on_cpu(monkeypatch):
    assert jax.default_backend() == "cpu" and jax.device_count() == 4
    assert not use_matmul_conv(2, 2, (3, 3), 128)  # several CPU devices: always XLA (docstring)
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert use_matmul_conv(2, 2, (3, 3), 128)  # kernel larger than the map: XLA:CPU is slow
    assert use_matmul_conv(1, 1, (3, 3), 512)
    assert use_matmul_conv(16, 16, (3, 3), 3)  # RGB stem
    assert use_matmul_conv(16, 16, (3, 3), 6)  # pair stem
    assert not use_matmul_conv(16, 16, (3, 3), 16)
    assert not use_matmul_conv(4, 4, (3, 3), 64)
    assert not use_matmul_conv(2, 2, (1, 1), 64)
    with pytest.raises(SemsadError, match="conv_impl"):
        ResNet(width=WIDTH, conv_impl="cudnn", rngs=nnx.Rngs(0))


# ---- parameter counts (torchvision) ------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34])
def test_parameter_count_matches_torchvision(depth):
    model = nnx.eval_shape(lambda: ResNet(depth=depth, width=64, out_dim=128, rngs=nnx.Rngs(0)))
    expected = TORCHVISION_FC10[depth] - (512 * 10 + 10) + (512 * 128 + 128)
    assert count_params(model) == expected  # 18: 11,234,496; 34: 21,342,656
    # The MLP head adds one 512 x 512 layer with bias; 6 input channels add 3 * 64 * 9 weights.
    mlp = nnx.eval_shape(lambda: ResNet(depth=depth, head="mlp", in_channels=6, rngs=nnx.Rngs(0)))
    assert count_params(mlp) == expected + 512 * 512 + 512 + 3 * 64 * 9


# ---- shapes, dtypes, options ------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34])
def test_output_and_feature_shapes(depth):
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    model = nnx.eval_shape(lambda: ResNet(depth=depth, width=WIDTH, out_dim=7, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m, x: m(x), model, x)
    feats = nnx.eval_shape(lambda m, x: m.features(x), model, x)
    assert out.shape == (2, 7) and out.dtype == jnp.float32
    assert feats.shape == (2, 8 * WIDTH) and feats.dtype == jnp.float32
    assert len(model.blocks) == {18: 8, 34: 16}[depth]
    assert model.blocks[-1].conv2.kernel.shape == (3, 3, 8 * WIDTH, 8 * WIDTH)
    strides = [b.conv1.strides for b in model.blocks if b.has_projection]
    assert strides == [2, 2, 2]  # projections exactly where the stage widens (not stage 1)


def test_depth_10_and_the_stride_2_stem():
    """ResNet-10 has one block per stage; a stride-2 stem keeps every parameter's shape and gives a
    32 px image the 16 x 16 maps of a 16 px one (what it is for: 32 px at 16 px cost)."""
    build = lambda **kw: nnx.eval_shape(lambda: ResNet(width=WIDTH, rngs=nnx.Rngs(0), **kw))
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(m)))
    ten = build(depth=10)
    assert len(ten.blocks) == 4 and [b.conv1.strides for b in ten.blocks] == [1, 2, 2, 2]
    strided = build(depth=18, stem_stride=2)
    assert shapes(strided) == shapes(build(depth=18)) and strided.stem_conv.strides == 2
    stem_out = lambda m, x: m.stem_conv(x)
    x32 = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert nnx.eval_shape(stem_out, strided, x32).shape == (2, 16, 16, WIDTH)
    assert nnx.eval_shape(lambda m, x: m.features(x), strided, x32).shape == (2, 8 * WIDTH)


def test_bfloat16_compute_keeps_float32_params_and_output():
    f32 = ResNet(width=WIDTH, out_dim=5, rngs=nnx.Rngs(3))
    bf16 = ResNet(width=WIDTH, out_dim=5, dtype="bfloat16", rngs=nnx.Rngs(3))
    params = jax.tree.leaves(nnx.state(bf16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    x = _images()
    out_bf16, out_f32 = _forward(bf16, x), _forward(f32, x)
    assert out_bf16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(out_bf16 - out_f32))) < 0.1 * float(jnp.max(jnp.abs(out_f32)))
    assert not np.allclose(np.asarray(out_bf16), np.asarray(out_f32), atol=1e-6)  # really bf16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))


def test_initialisation_follows_torchvision():
    model = ResNet(width=WIDTH, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.blocks[-1].conv2.kernel[...])  # 3x3, 8w -> 8w: fan_out = 9 * 8w
    assert abs(kernel.std() / math.sqrt(2.0 / (9 * 8 * WIDTH)) - 1) < 0.05
    assert abs(kernel.mean()) < 0.01
    head = np.asarray(model.head.kernel[...])  # torch Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    bound = 1 / math.sqrt(8 * WIDTH)
    assert np.abs(head).max() <= bound and np.abs(head).max() > 0.9 * bound
    assert np.abs(np.asarray(model.head.bias[...])).max() <= bound
    np.testing.assert_array_equal(np.asarray(model.blocks[0].norm2.scale[...]), 1.0)


# ---- norms: train / eval / batch dependence ---------------------------------------------------


def _first_output(model: ResNet, x: jax.Array) -> np.ndarray:
    return np.asarray(_forward(model, x))[0]


def _other_batch(x: jax.Array) -> jax.Array:
    """Same first image, different companions (same shape: no recompilation)."""
    return x.at[1:].set(_images(x.shape[0] - 1, x.shape[3], x.shape[1], seed=99))


def test_batchnorm_train_updates_running_stats_and_eval_is_batch_independent():
    model = ResNet(width=WIDTH, norm="batch", out_dim=5, rngs=nnx.Rngs(0))
    x = _images(seed=5)
    model.train()
    _forward(model, x)
    # Running stats after one step: 0.9 * (0, 1) + 0.1 * (batch mean, biased batch var).
    stem = _np_conv(np.asarray(x, np.float64), np.asarray(model.stem_conv.kernel[...]), 1)
    np.testing.assert_allclose(
        np.asarray(model.stem_norm.mean[...]), 0.1 * stem.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(model.stem_norm.var[...]), 0.9 + 0.1 * stem.var(axis=(0, 1, 2)), rtol=1e-4
    )
    # Train mode: an image's output depends on the rest of the batch.
    assert not np.allclose(
        _first_output(model, x), _first_output(model, _other_batch(x)), atol=1e-4
    )
    model.eval()
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    np.testing.assert_allclose(
        _first_output(model, x), _first_output(model, _other_batch(x)), rtol=1e-4, atol=1e-5
    )
    jax.tree.map(np.testing.assert_array_equal, stats, nnx.state(model, nnx.BatchStat))
    # Eval really uses the running statistics: a fresh model (stats 0 / 1) gives another output.
    fresh = ResNet(width=WIDTH, norm="batch", out_dim=5, rngs=nnx.Rngs(0))
    fresh.eval()
    assert not np.allclose(_first_output(fresh, x), _first_output(model, x), atol=1e-4)


def test_split_merge_round_trip_and_jitted_train_step_updates_stats():
    model = ResNet(width=WIDTH, norm="batch", out_dim=5, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert len(jax.tree.leaves(stats)) == 2 * (1 + 2 * 8 + 3)  # mean/var per BatchNorm
    initial = [np.asarray(a) for a in jax.tree.leaves(stats)]  # split may alias the model's arrays
    x = _images(seed=4)
    # A functional train step on the split state, as a training loop jits it.
    out, new_stats = jax.jit(
        lambda p, s, x: (lambda m: (m(x), nnx.state(m, nnx.BatchStat)))(nnx.merge(graphdef, p, s))
    )(params, stats, x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_forward(model, x)), rtol=1e-5)
    updated = jax.tree.leaves(new_stats)
    assert min(float(np.abs(a - b).max()) for a, b in zip(updated, initial)) > 0
    for functional, stateful in zip(updated, jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
        np.testing.assert_allclose(np.asarray(functional), np.asarray(stateful), rtol=1e-5)


def test_transductive_norm_always_uses_batch_statistics():
    model = ResNet(
        width=WIDTH,
        in_channels=6,
        activation="elu",
        norm="batch_transductive",
        out_dim=5,
        rngs=nnx.Rngs(0),
    )
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))  # no running statistics
    assert (
        len(jax.tree.leaves(nnx.state(model, nnx.Param))) == 3 * (1 + 2 * 8 + 3) + 2
    )  # convs, norm scale+bias, head
    assert isinstance(model.stem_norm, BatchStatNorm)
    x = _images(channels=6, seed=7)
    model.train()
    train_out = np.asarray(_forward(model, x))
    model.eval()
    np.testing.assert_allclose(np.asarray(_forward(model, x)), train_out, rtol=1e-5, atol=1e-6)
    assert not np.allclose(
        _first_output(model, x), _first_output(model, _other_batch(x)), atol=1e-4
    )


def test_group_norm_is_batch_independent():
    model = ResNet(
        width=WIDTH,
        in_channels=6,
        activation="elu",
        norm="group",
        head="mlp",
        out_dim=5,
        rngs=nnx.Rngs(0),
    )
    x = _images(channels=6, seed=9)
    np.testing.assert_allclose(
        _first_output(model, x), _first_output(model, _other_batch(x)), rtol=1e-4, atol=1e-5
    )


def test_group_count_rule():
    expected = {1: 1, 4: 2, 6: 3, 8: 4, 16: 8, 32: 16, 64: 32, 80: 16, 128: 32, 512: 32}
    assert {c: group_count(c) for c in expected} == expected


# ---- constructors and errors ------------------------------------------------------------------


def test_make_encoder_and_discriminator_from_config_sections():
    x3 = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    x6 = jax.ShapeDtypeStruct((2, 8, 8, 6), jnp.float32)
    enc = nnx.eval_shape(lambda: make_encoder(tiny_config("encoder"), rngs=nnx.Rngs(0)))
    assert nnx.eval_shape(lambda m, x: m(x), enc, x3).shape == (2, 8)
    assert enc.has_hidden and enc.activation == "relu"
    disc_cfg = types.SimpleNamespace(
        depth=18, width=WIDTH, activation="elu", norm="batch_transductive", head="linear",
        out_dim=64, conv_impl="auto",
    )  # fmt: skip
    disc = nnx.eval_shape(lambda: make_discriminator(disc_cfg, rngs=nnx.Rngs(0)))
    assert disc.activation == "elu" and not disc.has_hidden
    assert nnx.eval_shape(lambda m, x: m(x), disc, x6).shape == (2, 64)
    tiny = nnx.eval_shape(
        lambda: make_discriminator(tiny_config("discriminator"), rngs=nnx.Rngs(0))
    )
    assert nnx.eval_shape(lambda m, x: m(x), tiny, x6).shape == (2, 1)


def test_constructors_read_the_default_config():
    default = pytest.importorskip("configs.default")
    cfg = default.get_config()
    enc = nnx.eval_shape(lambda: make_encoder(cfg.encoder, rngs=nnx.Rngs(0), dtype=cfg.dtype))
    assert enc.has_hidden  # paper default: MLP head
    disc = nnx.eval_shape(lambda: make_discriminator(cfg.discriminator, rngs=nnx.Rngs(0)))
    assert disc.has_hidden and disc.activation == "elu"  # paper: an MLP head to a scalar, ELU
    assert disc.head.kernel.shape == (512, 1)
    assert len(disc.blocks) == 16 and disc.stem_conv.kernel.shape == (3, 3, 6, 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 50},
        {"norm": "layer"},
        {"head": "conv"},
        {"activation": "gelu"},
        {"dtype": "float16"},
        {"width": 0},
        {"stem_stride": 4},
    ],
)
def test_bad_options_raise_semsad_error(kwargs):
    with pytest.raises(SemsadError):
        nnx.eval_shape(lambda: ResNet(**kwargs, rngs=nnx.Rngs(0)))
