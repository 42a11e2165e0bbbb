"""Tiny config for tests: 8x8 images, width-4 ResNets, a couple of steps. Not for results."""

from semsad_jax.configs import default


def get_config():
    c = default.get_config()
    c.data.train = "sklearn:digits/train?classes=0,1,2&limit=64"
    c.data.test = "sklearn:digits/test?classes=0,1,2&limit=32"
    c.data.image_size = 8
    c.progress = False
    c.eval.plots = False
    e = c.encoder
    e.width, e.batch_size, e.epochs = 4, 16, 1
    e.checkpoint_every_steps, e.log_every_steps, e.knn_k = 2, 1, 10
    s = c.discriminator
    s.depth, s.width, s.batch_size, s.epochs = 18, 4, 16, 1
    s.lr_boundaries, s.lr_scales = (), ()
    s.checkpoint_every_steps, s.log_every_steps, s.feature_batch_size = 2, 1, 32
    r = c.rotation
    r.enabled = True
    r.depth, r.width, r.batch_size, r.epochs = 18, 4, 16, 1
    r.checkpoint_every_steps, r.log_every_steps = 2, 1
    c.eval.ood.digits_7_9 = "sklearn:digits/test?classes=7,8,9&limit=24"
    c.eval.batch_size = 16
    return c
