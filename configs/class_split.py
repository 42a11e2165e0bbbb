"""Class-split / latent multi-class protocol on CIFAR-10 (shared JPEG archive).

A SET of classes is in-distribution (CLAD's "latent multi-class" setting: the normal data is a union
of several semantic classes); the other classes are the OOD set ``rest``. The argument after ``:``
names the split (default ``first5``):

    first5     airplane, automobile, bird, cat, deer        (the usual CIFAR-10 5/5 split)
    vehicles   airplane, automobile, ship, truck            (CLAD-style super-category)
    animals    bird, cat, deer, dog, frog, horse            (CLAD-style super-category)
    a,b,c      any comma-separated class names or indices

    python main.py --config=configs/class_split.py:vehicles --workdir=runs/split/vehicles --mode=all

CPU-sized like configs/cifar10_shared.py; see docs/protocols.md.
"""

from semsad_jax.configs import cifar10_shared, far_ood
from semsad_jax.configs.oneclass import CLASSES, class_name

SPLITS = {
    "first5": CLASSES[:5],
    "vehicles": ("airplane", "automobile", "ship", "truck"),
    "animals": ("bird", "cat", "deer", "dog", "frog", "horse"),
}


def split_classes(arg: str) -> tuple[str, ...]:
    """A split name or a comma-separated class list -> class names (in CIFAR-10 order)."""
    arg = str(arg).strip()
    names = SPLITS.get(arg) or {class_name(a) for a in arg.split(",") if a.strip()}
    if not names or len(names) == len(CLASSES):
        raise ValueError(
            f"class split {arg!r} must keep some classes out; see configs/class_split.py"
        )
    return tuple(n for n in CLASSES if n in names)


def get_config(arg: str = "first5"):
    c = cifar10_shared.get_config()
    inside = split_classes(arg)
    classes = ",".join(inside)
    archive = cifar10_shared.ARCHIVE
    c.data.train = f"archive:{archive}!train?classes={classes}&limit=10000"
    c.data.test = f"archive:{archive}!test?classes={classes}"
    del c.eval.ood["cifar10_last_five"]
    c.eval.ood.rest = f"archive:{archive}!test?exclude={classes}"
    far_ood.add(c)
    return c
