"""Embedded demo: scikit-learn's handwritten digits (1797 images, 8x8 grey, upscaled to 16x16).

Runs end to end in minutes on 2 CPU cores; nothing is downloaded:

    python main.py --config=configs/digits.py --workdir=runs/digits --mode=all

In-distribution = digits 0-4, OOD = digits 5-9 (the class-split protocol), so the demo is a real,
if small, novelty-detection task.
"""

from semsad_jax.configs import default, far_ood


def get_config():
    c = default.get_config()
    c.data.train = "sklearn:digits/train?classes=0,1,2,3,4"
    c.data.test = "sklearn:digits/test?classes=0,1,2,3,4"
    c.data.image_size = 16
    c.encoder.width = 16
    c.encoder.batch_size = 128
    c.encoder.epochs = 30
    c.encoder.temperature = 0.5
    c.encoder.checkpoint_every_steps = 100
    c.encoder.log_every_steps = 10
    c.encoder.knn_k = 20
    c.discriminator.depth = 18
    c.discriminator.width = 16
    c.discriminator.batch_size = 64
    c.discriminator.epochs = 20
    c.discriminator.learning_rate = 3e-4
    c.discriminator.lr_boundaries = (14, 18)
    c.discriminator.checkpoint_every_steps = 100
    c.discriminator.log_every_steps = 10
    c.discriminator.feature_batch_size = 256
    c.eval.ood.digits_5_9 = "sklearn:digits/test?classes=5,6,7,8,9"
    far_ood.add(c, limit=300, exclude=("far_digits",))  # the other digits are the near-OOD set
    c.eval.batch_size = 128
    return c
