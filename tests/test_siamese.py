"""The encoder-initialised siamese discriminator (extension: discriminator.arch = "siamese",
init_from_encoder, trunk_lr_scale): its function, that it starts from the encoder's weights, and
that the trunk's learning rate is scaled (0 = frozen) through the real discriminator stage."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import load_discriminator, load_encoder

from semsad_jax.configs import smoke
from semsad_jax.errors import SemsadError
from semsad_jax.models import build, split_model
from semsad_jax.models.siamese import SiameseDiscriminator, initialise_from_encoder
from semsad_jax.run import run
from semsad_jax.train.discriminator import _fresh_discriminator
from semsad_jax.train.optim import make_optimizer


def _config(**disc):
    c = smoke.get_config()
    c.discriminator.update(dict(arch="siamese", norm="batch", **disc))
    return c


def _pure(module):
    return nnx.to_pure_dict(nnx.state(module))


def test_siamese_scores_the_pair_from_one_shared_trunk():
    c = _config()
    model = build("discriminator", c.discriminator, seed=0)
    assert isinstance(model, SiameseDiscriminator)
    assert "head" not in _pure(model.trunk)  # a trunk only: the encoder's head is not part of it
    model.eval()
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 3, 8, 8, 3)).astype(np.float32)
    out = np.asarray(model(jnp.concatenate([a, b], -1)))
    # by hand: f = trunk(x), f' = trunk(x'), head(elu(hidden([f, f', |f - f'|, f * f'])))
    f, f2 = np.asarray(model.trunk(a)), np.asarray(model.trunk(b))
    joint = np.concatenate([f, f2, np.abs(f - f2), f * f2], -1)
    p = _pure(model)
    hidden = np.asarray(jax.nn.elu(joint @ p["head_hidden"]["kernel"] + p["head_hidden"]["bias"]))
    expected = hidden @ p["head"]["kernel"] + p["head"]["bias"]
    assert out.shape == (3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    swapped = np.asarray(model(jnp.concatenate([b, a], -1)))
    assert not np.allclose(out, swapped)  # the reference and the partner are not interchangeable


def test_init_from_encoder_starts_from_the_encoders_trunk():
    c = _config(init_from_encoder=True)
    encoder = build("encoder", c.encoder, seed=3)
    # give the encoder non-default running statistics, so that copying them is visible
    encoder(jnp.asarray(np.random.default_rng(1).random((16, 8, 8, 3)), jnp.float32))
    fresh = _fresh_discriminator(c.discriminator, 0, jnp.float32, split_model(encoder))
    enc, trunk = _pure(encoder), _pure(fresh.trunk)
    assert set(trunk) == set(enc) - {"head", "head_hidden"}
    for key in trunk:
        for x, y in zip(jax.tree.leaves(trunk[key]), jax.tree.leaves(enc[key])):
            np.testing.assert_array_equal(x, y)
    assert np.any(np.asarray(enc["stem_norm"]["mean"]) != 0)
    plain = _fresh_discriminator(_config().discriminator, 0, jnp.float32, split_model(encoder))
    assert not np.allclose(_pure(plain.trunk)["stem_conv"]["kernel"], enc["stem_conv"]["kernel"])
    # the trunks must match, and the paper's discriminator has no trunk to start from
    wide = smoke.get_config().encoder
    wide.width = 8
    wider = build("encoder", wide, seed=0)
    with pytest.raises(SemsadError, match="depth, width and norm"):
        _fresh_discriminator(c.discriminator, 0, jnp.float32, split_model(wider))
    strided = c.encoder.copy_and_resolve_references()
    strided.stem_stride = 2  # same shapes, other maps: the trunk would not compute the encoder
    with pytest.raises(SemsadError, match="stride-2 stem"):
        _fresh_discriminator(c.discriminator, 0, jnp.float32,
                             split_model(build("encoder", strided, seed=0)))  # fmt: skip
    with pytest.raises(SemsadError, match="arch='siamese'"):
        initialise_from_encoder(build("discriminator", smoke.get_config().discriminator, seed=0),
                                split_model(encoder))  # fmt: skip


def test_trunk_lr_scale_multiplies_only_the_trunks_updates():
    params = {"trunk": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}}
    grads = {"trunk": {"w": jnp.full(3, 0.5)}, "head": {"w": jnp.full(2, -0.25)}}
    section = dict(
        optimizer="adam", learning_rate=1e-2, weight_decay=0.0, schedule="constant",
        warmup_epochs=0, epochs=1, lr_boundaries=(), lr_scales=(),
    )  # fmt: skip

    def updates(scale):
        from ml_collections import ConfigDict

        tx = make_optimizer(ConfigDict(dict(section, trunk_lr_scale=scale)), 10)
        return tx.update(grads, tx.init(params), params)[0]

    full, tenth, frozen = updates(1.0), updates(0.1), updates(0.0)
    np.testing.assert_allclose(tenth["trunk"]["w"], 0.1 * full["trunk"]["w"], rtol=1e-6)
    np.testing.assert_allclose(tenth["head"]["w"], full["head"]["w"])
    np.testing.assert_array_equal(frozen["trunk"]["w"], np.zeros(3))
    assert np.all(np.asarray(frozen["head"]["w"]) != 0)
    adam = optax.adam(1e-2)
    np.testing.assert_allclose(
        full["trunk"]["w"], adam.update(grads, adam.init(params), params)[0]["trunk"]["w"]
    )


def test_frozen_encoder_initialised_discriminator_through_the_stage(tmp_path):
    """The real stage: the trained discriminator's trunk is the encoder's (trunk_lr_scale=0 keeps
    its parameters), its head has moved, and eval scores with it."""
    config = _config(init_from_encoder=True, trunk_lr_scale=0.0)
    workdir = str(tmp_path / "w")
    run(config, workdir, "all")
    _, enc_params, _ = load_encoder(workdir, config)
    _, params, _ = load_discriminator(workdir, config)
    for key in params["trunk"]:
        for x, y in zip(jax.tree.leaves(params["trunk"][key]), jax.tree.leaves(enc_params[key])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    fresh = _pure(build("discriminator", config.discriminator, seed=config.seed))
    assert not np.allclose(np.asarray(params["head"]["kernel"]), fresh["head"]["kernel"])
