"""One-class protocol on CIFAR-10 (shared JPEG archive): one class in, the other nine out.

The argument after ``:`` picks the in-distribution class (index 0-9 or name, default 0):

    python main.py --config=configs/oneclass.py:3 --workdir=runs/oneclass/class3 --mode=all
    bash scripts/oneclass.sh runs/oneclass      # all ten classes, then the mean over classes

Training and test images of that class are in-distribution; the OOD set ``rest`` is the test images
of the other nine classes (the same name for every class, so ``--mode=report`` averages over
classes). CPU-sized like configs/cifar10_shared.py; see docs/protocols.md.
"""

from semsad_jax.configs import cifar10_shared, far_ood

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def class_name(arg: str) -> str:
    """'3' or 'cat' -> 'cat'; ValueError for anything else."""
    arg = str(arg).strip()
    if arg.isdigit() and int(arg) < len(CLASSES):
        return CLASSES[int(arg)]
    if arg in CLASSES:
        return arg
    raise ValueError(f"unknown CIFAR-10 class {arg!r}; use 0-9 or one of {', '.join(CLASSES)}")


def get_config(arg: str = "0"):
    c = cifar10_shared.get_config()
    name = class_name(arg)
    archive = cifar10_shared.ARCHIVE
    c.data.train = f"archive:{archive}!train?classes={name}"
    c.data.test = f"archive:{archive}!test?classes={name}"
    del c.eval.ood["cifar10_last_five"]
    c.eval.ood.rest = f"archive:{archive}!test?exclude={name}"
    far_ood.add(c)
    return c
