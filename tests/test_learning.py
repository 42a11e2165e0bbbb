"""Each stage learns: on real images (scikit-learn's digits, 8 px, test-sized networks) the encoder's
kNN accuracy clears chance by a wide margin, and the discriminator separates held-out positive pairs
from negative pairs. Minutes on 2 CPU cores; one encoder and one discriminator for the module."""

import jax
import numpy as np
import pytest
from helpers import load_test_set, load_train_set, train_discriminator, train_encoder

from configs import smoke
from semsad_jax import parallel

pytestmark = pytest.mark.slow
CLASSES = 5
CHANCE = 1.0 / CLASSES
MARGIN = 0.4  # the encoder's kNN accuracy must reach chance + MARGIN (0.6 on five classes)


def _config():
    c = smoke.get_config()
    c.data.train = "sklearn:digits/train?classes=0,1,2,3,4"
    c.data.test = "sklearn:digits/test?classes=0,1,2,3,4"
    e = c.encoder
    e.width, e.batch_size, e.epochs, e.learning_rate, e.temperature = 8, 64, 8, 2e-3, 0.2
    e.augment, e.knn_k = "t_pos", 20  # crops / flips / jitter: enough at 8 px
    e.checkpoint_every_steps, e.log_every_steps = 1000, 50
    s = c.discriminator
    s.width, s.batch_size, s.epochs, s.learning_rate = 8, 64, 6, 1e-3
    s.checkpoint_every_steps, s.log_every_steps = 1000, 50
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _config()
    workdir = tmp_path_factory.mktemp("learning")
    train, test = load_train_set(config), load_test_set(config)
    mesh = parallel.make_mesh(jax.local_devices()[:1])  # one device: faster on 2 cores
    encoder = train_encoder(config, workdir, train, test, mesh=mesh)
    discriminator = train_discriminator(config, workdir, train, test, mesh=mesh)
    return encoder, discriminator


def test_encoder_knn_accuracy_clears_chance(trained):
    encoder, _ = trained
    assert encoder["knn_accuracy"] >= CHANCE + MARGIN, encoder


def test_discriminator_separates_held_out_pairs(trained):
    _, disc = trained
    assert disc["heldout_pairs"] >= 64
    assert disc["heldout_pair_auroc"] > 0.8, disc
    assert disc["heldout_mean_s_pos"] > disc["heldout_mean_s_neg"], disc
    assert np.isfinite(disc["heldout_mean_s_pos"])
