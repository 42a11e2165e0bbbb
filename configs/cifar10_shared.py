"""CIFAR-10 from the shared JPEG archive (no download), CPU-sized by default.

The archive path is ../shared/data/cifar10-jpeg.tar.gz next to the repository, or
$SEMSAD_CIFAR10_ARCHIVE (or override --config.data.train=archive:PATH!train). The default is sized for a 2-core CPU: 16x16 images, width-16
networks, a 10k-image training subset. For the paper's sizes on a GPU, use
--config.data.image_size=32 --config.encoder.width=64 ... or configs/cifar10.py.

The encoder ships the CPU recipe, chosen by the encoder's kNN accuracy on the validation class split
at equal compute (benchmarks/README.md, "Encoder recipes at equal compute"); NOT the paper's:
ResNet-10 (one block per stage, half the compute of a ResNet-18 step for the same accuracy per
step), SimCLR views with crops of at least 20% (``encoder_mild``; a 0.08 crop of a 16 px image is a
4 x 4 patch), temperature 0.1, Adam 1e-3, 120 epochs of the 10k images (about 22 minutes on a 2-core
CPU; a one-class set of 5,000 images about 11). The discriminator keeps its CPU sizes (ResNet-18,
width 16, 10 epochs). The rotation detector is on (``rotation.enabled``: a ResNet-18 of width 16
predicting the four rotations, 40 epochs at batch 64), about the compute of SemSAD's two stages.

Class split (first five classes in, last five out):
    --config.data.train='archive:...!train?classes=0,1,2,3,4' and eval.ood as below.
"""

import os

from semsad_jax.configs import default, far_ood

# ../shared/data/cifar10-jpeg.tar.gz beside a checkout; $SEMSAD_CIFAR10_ARCHIVE elsewhere (an
# installed package: its configs live in site-packages).
ARCHIVE = os.environ.get("SEMSAD_CIFAR10_ARCHIVE") or os.path.normpath(
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
    c.encoder.depth = 10
    c.encoder.batch_size = 256
    c.encoder.epochs = 120
    c.encoder.learning_rate = 1e-3
    c.encoder.temperature = 0.1
    c.encoder.augment = "encoder_mild"
    c.encoder.checkpoint_every_steps = 500
    c.encoder.knn_k = 200
    c.discriminator.depth = 18
    c.discriminator.width = 16
    c.discriminator.batch_size = 128
    c.discriminator.epochs = 10
    c.discriminator.learning_rate = 2e-4
    c.discriminator.lr_boundaries = (6, 9)
    c.discriminator.checkpoint_every_steps = 200
    # the rotation detector (Hendrycks et al. 2019), trained beside SemSAD at about the CPU minutes
    # of its two stages (docs/results.md, "Rotation prediction at equal compute")
    r = c.rotation
    r.enabled = True
    r.depth, r.width, r.batch_size, r.epochs = 18, 16, 64, 40
    r.checkpoint_every_steps = 500
    c.eval.combined = "rotation,pixels_knn"  # chosen on validation (docs/results.md)
    c.eval.ood.cifar10_last_five = f"archive:{ARCHIVE}!test?classes={LAST_FIVE}"
    return far_ood.add(c)
