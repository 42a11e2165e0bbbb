"""Contaminated-training protocol (as in UFDGAN / GAN mode collapse): unlabelled outliers in training.

In-distribution = the first five CIFAR-10 classes (shared JPEG archive). TRAINING images of the last
five classes (``data.contamination_source``) are added to the training set by
``semsad_jax.data.contaminate`` so that they make up the fraction given after ``:`` (default 0.05)
of it. The OOD set is the TEST images of the last five classes, so no contaminating image is scored:

    python main.py --config=configs/contaminated.py:0.05 --workdir=runs/contam/05 --mode=all
    python main.py --config=configs/contaminated.py:0 --workdir=runs/contam/00 --mode=all  # clean

Compare the two runs' results.txt (or --mode=report over seeds of each); see docs/protocols.md.
"""

from semsad_jax.configs import cifar10_shared


def get_config(arg: str = "0.05"):
    c = cifar10_shared.get_config()
    fraction = float(arg)
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"contamination fraction {arg!r} must be in [0, 1)")
    c.data.contamination = fraction
    c.data.contamination_source = (
        f"archive:{cifar10_shared.ARCHIVE}!train?classes={cifar10_shared.LAST_FIVE}"
    )
    return c
