"""Far-OOD image sets that ship offline: synthetic images and crops of scikit-learn's sample photos.

``synthetic:NAME`` gives :data:`SYNTHETIC_COUNT` images, generated deterministically (the same images
on every machine), each a different domain from natural photographs of objects:

    noise         uniform RGB noise, every pixel independent
    constant      one flat random colour per image
    blobs         smooth random colour fields (a 4 x 4 grid of random colours, bilinearly upsampled)
    stripes       sinusoidal gratings, random orientation, frequency and two random colours
    checkerboard  two random colours, random cell size
    shapes        a few random filled circles, rectangles and triangles on a flat random background
    text          random letters and digits in PIL's built-in font, random colours

``sklearn:sample_images`` gives crops of the two photos scikit-learn ships (a temple, a flower):
:data:`SYNTHETIC_COUNT` random square crops of 40 to 200 pixels, resized.

All are drawn at ``SIZE`` pixels and resized to ``data.image_size`` by the loader; the usual
``?limit=N&seed=S`` query picks a subset.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from semsad_jax.data.specs import SYNTHETIC
from semsad_jax.errors import SemsadError

__all__ = ["SYNTHETIC", "SYNTHETIC_COUNT", "sample_image_crops", "synthetic_images"]

SYNTHETIC_COUNT = 1000
SIZE = 32


def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 3)).astype(np.float32)


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _constant(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.broadcast_to(_colours(rng, n)[:, None, None, :], (n, SIZE, SIZE, 3)).astype(np.uint8)


def _blobs(rng: np.random.Generator, n: int) -> np.ndarray:
    grids = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    out = [
        np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
        for g in grids
    ]
    return np.stack(out)


def _stripes(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi, n)[:, None, None]
    period = rng.uniform(3, 16, n)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    wave = 0.5 + 0.5 * np.sin(
        2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase
    )
    a, b = _colours(rng, n)[:, None, None, :], _colours(rng, n)[:, None, None, :]
    return np.rint(a + (b - a) * wave[..., None]).astype(np.uint8)


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    cell = rng.integers(2, 11, n)[:, None, None]
    parity = ((yy // cell + xx // cell) % 2).astype(bool)[..., None]
    a, b = _colours(rng, n)[:, None, None, :], _colours(rng, n)[:, None, None, :]
    return np.where(parity, a, b).astype(np.uint8)


def _draw(rng: np.random.Generator, n: int, paint) -> np.ndarray:
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i in range(n):
        image = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in _colours(rng, 1)[0]))
        paint(ImageDraw.Draw(image), rng)
        out[i] = np.asarray(image)
    return out


def _paint_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(c) for c in _colours(rng, 1)[0])
        x0, y0 = rng.integers(0, SIZE - 4, 2)
        w, h = rng.integers(4, SIZE // 2 + 1, 2)
        box = [int(x0), int(y0), int(min(x0 + w, SIZE - 1)), int(min(y0 + h, SIZE - 1))]
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            points = [tuple(int(v) for v in rng.integers(0, SIZE, 2)) for _ in range(3)]
            draw.polygon(points, fill=colour)


_GLYPHS = string.ascii_letters + string.digits


def _paint_text(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    font = ImageFont.load_default()
    colour = tuple(int(c) for c in _colours(rng, 1)[0])
    for row in range(int(rng.integers(1, 4))):
        text = "".join(rng.choice(list(_GLYPHS), int(rng.integers(2, 6))))
        x, y = int(rng.integers(0, 8)), 2 + 10 * row + int(rng.integers(0, 3))
        draw.text((x, y), text, fill=colour, font=font)


_GENERATORS = {
    "noise": _noise,
    "constant": _constant,
    "blobs": _blobs,
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "shapes": lambda rng, n: _draw(rng, n, _paint_shapes),
    "text": lambda rng, n: _draw(rng, n, _paint_text),
}


def synthetic_images(name: str, count: int = SYNTHETIC_COUNT) -> np.ndarray:
    """uint8 [count, SIZE, SIZE, 3] of the synthetic set ``name`` (deterministic)."""
    if name not in _GENERATORS:
        raise SemsadError(
            f"unknown synthetic set {name!r}; use one of {', '.join(SYNTHETIC)} "
            "(e.g. synthetic:noise)."
        )
    rng = np.random.default_rng(SYNTHETIC.index(name) + 1000)
    return np.ascontiguousarray(_GENERATORS[name](rng, count))


def sample_image_crops(count: int = SYNTHETIC_COUNT) -> np.ndarray:
    """uint8 [count, SIZE, SIZE, 3]: random square crops of scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(7)
    out = np.empty((count, SIZE, SIZE, 3), np.uint8)
    for i in range(count):
        photo = photos[int(rng.integers(0, len(photos)))]
        side = int(rng.integers(40, 201))
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        out[i] = np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return out
