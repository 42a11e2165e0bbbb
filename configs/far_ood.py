"""The far-OOD suite: image sets from other domains that ship offline, for every quality table.

Each set is a different domain from natural photographs of objects (see semsad_jax/data/synthetic.py):
uniform noise, flat colours, smooth colour blobs, stripes, checkerboards, drawn shapes, rendered text,
crops of scikit-learn's two sample photos, and scikit-learn's handwritten digits (grayscale strokes,
the far-OOD case of the issue that found the discriminator's shortcut). A good detector scores all of
them far below the in-distribution test images; the paper's headline case is of this kind (CIFAR-10
against SVHN).

    from configs import far_ood
    far_ood.add(config)                 # eval.ood.far_noise = "synthetic:noise?limit=1000", ...
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


def specs(limit: int = 1000, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """name -> spec of the suite, each limited to ``limit`` images (a fixed random subset)."""
    return {k: f"{v}?limit={limit}" for k, v in FAR_OOD.items() if k not in exclude}


def add(config, limit: int = 1000, exclude: tuple[str, ...] = ()):
    """Adds the suite at the end of ``config.eval.ood`` (moving it there if present); returns it."""
    for name in FAR_OOD:
        if name in config.eval.ood:
            del config.eval.ood[name]
    for name, spec in specs(limit, exclude).items():
        config.eval.ood[name] = spec
    return config
