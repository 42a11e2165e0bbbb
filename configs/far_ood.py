"""The far-OOD suite: image sets from other domains that ship offline, for every quality table.

Each set is a different domain from natural photographs of objects (see semsad_jax/data/synthetic.py):
uniform noise, flat colours, smooth colour blobs, stripes, checkerboards, drawn shapes, rendered text,
crops of scikit-learn's two sample photos, and scikit-learn's handwritten digits (grayscale strokes,
the far-OOD case of the issue that found the discriminator's shortcut). A good detector scores all of
them far below the in-distribution test images; the paper's headline case is of this kind (CIFAR-10
against SVHN).

    from semsad_jax.configs import far_ood
    far_ood.add(config)                 # eval.ood.far_noise = "synthetic:noise?limit=1000", ...

Validation and report (benchmarks/cifar10_quality.py ``--split``): ``specs(limit, part="holdout")``
gives each set's held-out images (:data:`HOLDOUT`: 500 of the 1000 images of a synthetic or photo
set, 50 of each digit), drawn with another seed (:data:`VALIDATION_SEED`); ``part="fit"`` gives the
rest, for the report. The two are disjoint, so nothing chosen on validation saw a reported image.
Without ``part`` (the configs): a random subset of the whole set, as before.
"""

FAR_OOD = {
    "far_noise": "synthetic:noise",
    "far_constant": "synthetic:constant",
    "far_blobs": "synthetic:blobs",
    "far_stripes": "synthetic:stripes",
    "far_checkerboard": "synthetic:checkerboard",
    "far_shapes": "synthetic:shapes",
    "far_text": "synthetic:text",
    "far_photos": "sklearn:sample_images",
    "far_digits": "sklearn:digits",
}


# held out for validation, per set: images of the set (synthetic, photos) or of each class (digits)
HOLDOUT = {name: 50 if name == "far_digits" else 500 for name in FAR_OOD}
VALIDATION_SEED = 1  # the limit's seed on the held-out part (the report keeps the default, 0)


def specs(
    limit: int = 1000, exclude: tuple[str, ...] = (), part: str | None = None
) -> dict[str, str]:
    """name -> spec of the suite, each limited to ``limit`` images (a fixed random subset).

    ``part``: None = of the whole set; "holdout" = of the validation images (:data:`HOLDOUT`, the
    limit drawn with :data:`VALIDATION_SEED`); "fit" = of the others, for the report.
    """
    if part not in (None, "fit", "holdout"):
        raise ValueError(f"part={part!r}: use None, 'fit' or 'holdout'")
    out = {}
    for name, spec in FAR_OOD.items():
        if name in exclude:
            continue
        query = f"holdout={HOLDOUT[name]}&part={part}&" if part else ""
        seed = f"&seed={VALIDATION_SEED}" if part == "holdout" else ""
        out[name] = f"{spec}?{query}limit={limit}{seed}"
    return out


def add(config, limit: int = 1000, exclude: tuple[str, ...] = ()):
    """Adds the suite at the end of ``config.eval.ood`` (moving it there if present); returns it."""
    for name in FAR_OOD:
        if name in config.eval.ood:
            del config.eval.ood[name]
    for name, spec in specs(limit, exclude).items():
        config.eval.ood[name] = spec
    return config
