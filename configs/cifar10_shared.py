"""CIFAR-10 from the shared JPEG archive (no download), CPU-sized by default.

The archive path is ../shared/data/cifar10-jpeg.tar.gz next to the repository (override with
--config.data.train=archive:PATH!train). The default is sized for a 2-core CPU: 16x16 images, width-16
networks, a 10k-image training subset, few epochs. For the paper's sizes on a GPU, use
--config.data.image_size=32 --config.encoder.width=64 ... or configs/cifar10.py.

Class split (first five classes in, last five out):
    --config.data.train='archive:...!train?classes=0,1,2,3,4' and eval.ood as below.
"""

import os

from configs import default, far_ood

ARCHIVE = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)),
        "..",
        "..",
        "shared",
        "data",
        "cifar10-jpeg.tar.gz",
    )
)
FIRST_FIVE = "airplane,automobile,bird,cat,deer"
LAST_FIVE = "dog,frog,horse,ship,truck"


def get_config():
    c = default.get_config()
    c.data.train = f"archive:{ARCHIVE}!train?classes={FIRST_FIVE}&limit=10000"
    c.data.test = f"archive:{ARCHIVE}!test?classes={FIRST_FIVE}"
    c.data.image_size = 16
    c.encoder.width = 16
    c.encoder.batch_size = 256
    c.encoder.epochs = 15
    c.encoder.temperature = 0.5
    c.encoder.checkpoint_every_steps = 200
    c.encoder.knn_k = 200
    c.discriminator.depth = 18
    c.discriminator.width = 16
    c.discriminator.batch_size = 128
    c.discriminator.epochs = 10
    c.discriminator.learning_rate = 2e-4
    c.discriminator.lr_boundaries = (6, 9)
    c.discriminator.checkpoint_every_steps = 200
    c.eval.ood.cifar10_last_five = f"archive:{ARCHIVE}!test?classes={LAST_FIVE}"
    return far_ood.add(c)
