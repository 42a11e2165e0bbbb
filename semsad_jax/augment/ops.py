"""Image augmentation ops with torchvision semantics, each on one image [H, W, 3] float32 in [0, 1].

Random ops come in two forms: ``op(key, image, ...)`` and ``op_from_uniforms(uniforms, image, ...)``
taking ``UNIFORMS_PER_OP[op]`` U[0, 1) draws (what :mod:`semsad_jax.augment` uses: one threefry call
per image is much cheaper to compile and to run than a key split per op). Images stay float between
ops (torchvision on PIL images rounds to uint8 after each op).

dm-pix is used where it matches torchvision: ``pix.flip_left_right`` and ``pix.adjust_hue`` (same HSV
round trip, hue shift mod 1). Written by hand, because dm-pix follows ``tf.image`` or lacks the op:

- brightness: dm-pix adds a delta; torchvision multiplies by a factor (blend with black), then clamps.
- contrast: dm-pix blends with each channel's mean; torchvision with the mean of the grayscale image.
- saturation: dm-pix scales S in HSV; torchvision blends with the grayscale image.
- grayscale: dm-pix weights 0.2989/0.587/0.114 (sum 0.9999); here ITU-R 601-2 0.299/0.587/0.114.
- blur: dm-pix pads with zeros; torchvision reflects. Same kernel as ``pix.gaussian_blur``, applied
  as reflect-padded separable matrices (dm-pix's depthwise conv with a per-example sigma is slow).
- resized crop: dm-pix has none. The crop box is sampled as torchvision does; the crop is resampled to
  the input size in one pass with separable bilinear interpolation matrices (half-pixel centres, edge
  clamped inside the crop), which is PIL's crop-then-resize (always an upscale, so no antialiasing).
  ``jax.image.scale_and_translate`` on the whole image would blend pixels from outside the crop.
"""

from __future__ import annotations

import math
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

from semsad_jax.errors import SemsadError

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL convert("L") and torchvision's PIL path
CROP_ATTEMPTS = 10  # torchvision RandomResizedCrop.get_params
UNIFORMS_PER_OP = {"crop": 2 * CROP_ATTEMPTS + 2, "flip": 1, "jitter": 9, "gray": 1, "blur": 2}
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 in the small resampling matmuls on GPU


# ----------------------------------------------------------------------------- geometry


def _between(uniform: jax.Array, low: Any, high: Any) -> jax.Array:
    """Map U[0, 1) draws onto U[low, high)."""
    return low + uniform * (jnp.asarray(high, jnp.float32) - low)


def _below(uniform: jax.Array, count: jax.Array) -> jax.Array:
    """Map a U[0, 1) draw onto a uniform integer in 0..count-1 (torch.randint(0, count))."""
    return jnp.minimum(jnp.floor(uniform * count).astype(jnp.int32), count - 1)


def crop_box_from_uniforms(
    uniforms: jax.Array, height: int, width: int, scale: Any, ratio: Any
) -> jax.Array:
    """:func:`sample_crop_box` from 22 U[0, 1) draws (areas, log aspects, top, left)."""
    attempts = CROP_ATTEMPTS
    area = height * width * _between(uniforms[:attempts], scale[0], scale[1])
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = jnp.exp(_between(uniforms[attempts : 2 * attempts], *log_ratio))
    crop_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # round half to even, as Python
    crop_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    found, first = jnp.any(fits), jnp.argmax(fits)
    if width / height < min(ratio):
        fallback_w, fallback_h = width, round(width / min(ratio))
    elif width / height > max(ratio):
        fallback_w, fallback_h = round(height * max(ratio)), height
    else:
        fallback_w, fallback_h = width, height
    crop_h = jnp.where(found, crop_h[first], fallback_h)
    crop_w = jnp.where(found, crop_w[first], fallback_w)
    top = jnp.where(found, _below(uniforms[-2], height - crop_h + 1), (height - crop_h) // 2)
    left = jnp.where(found, _below(uniforms[-1], width - crop_w + 1), (width - crop_w) // 2)
    return jnp.stack([top, left, crop_h, crop_w]).astype(jnp.int32)


def sample_crop_box(
    key: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """torchvision RandomResizedCrop.get_params: int32[4] = (top, left, crop_height, crop_width).

    Ten attempts of (area ~ U(scale) * H * W, log aspect ~ U(log ratio)), rounded; the first one
    that fits wins, else the central crop clipped to the ratio range.
    """
    uniforms = jax.random.uniform(key, (UNIFORMS_PER_OP["crop"],))
    return crop_box_from_uniforms(uniforms, height, width, scale, ratio)


def _bilinear_matrix(start: jax.Array, length: jax.Array, out_size: int, in_size: int) -> jax.Array:
    """[out_size, in_size] weights resampling ``length`` pixels from ``start`` (PIL bilinear)."""
    start = start.astype(jnp.float32)
    last = start + length.astype(jnp.float32) - 1
    pos = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length / out_size) - 0.5
    pos = jnp.clip(pos, start, last)
    lower = jnp.floor(pos)
    frac = (pos - lower)[:, None]
    upper = jnp.minimum(lower + 1, last)
    columns = jnp.arange(in_size, dtype=jnp.float32)[None, :]
    return (columns == lower[:, None]) * (1 - frac) + (columns == upper[:, None]) * frac


def resized_crop(image: jax.Array, box: jax.Array) -> jax.Array:
    """Crop ``box`` = (top, left, h, w) of image [H, W, C] and resize it bilinearly to [H, W, C]."""
    height, width = image.shape[:2]
    rows = _bilinear_matrix(box[0], box[2], height, height)
    cols = _bilinear_matrix(box[1], box[3], width, width)
    return jnp.einsum("yi,ijc,xj->yxc", rows, image, cols, precision=_HIGHEST)


def random_resized_crop(
    key: jax.Array,
    image: jax.Array,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """torchvision RandomResizedCrop to the input size: [H, W, 3] float32 -> [H, W, 3] float32."""
    box = sample_crop_box(key, image.shape[0], image.shape[1], scale, ratio)
    return resized_crop(image, box)


def flip_from_uniform(uniform: jax.Array, image: jax.Array, p: float) -> jax.Array:
    """:func:`flip` from one U[0, 1) draw."""
    return jnp.where(uniform < p, pix.flip_left_right(image), image)


def flip(key: jax.Array, image: jax.Array, p: float = 0.5) -> jax.Array:
    """Horizontal flip of [H, W, C] with probability ``p`` (RandomHorizontalFlip)."""
    return flip_from_uniform(jax.random.uniform(key), image, p)


# ----------------------------------------------------------------------------- colour


def _luma(image: jax.Array) -> jax.Array:
    """[H, W, 3] -> [H, W, 1] grayscale (ITU-R 601-2)."""
    red, green, blue = (image[..., c : c + 1] * w for c, w in enumerate(LUMA_WEIGHTS))
    return red + green + blue  # elementwise, so XLA fuses it (a size-3 dot does not fuse)


def rgb_to_grayscale(image: jax.Array) -> jax.Array:
    """Grayscale with 3 equal channels: [H, W, 3] -> [H, W, 3] (Grayscale(num_output_channels=3))."""
    return jnp.broadcast_to(_luma(image), image.shape)


def _blend(image: jax.Array, reference: jax.Array, factor: jax.Array) -> jax.Array:
    """torchvision _blend: clamp(factor * image + (1 - factor) * reference, 0, 1)."""
    return jnp.clip(factor * image + (1 - factor) * reference, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Multiply by ``factor`` (blend with black), clamp to [0, 1]."""
    return _blend(image, jnp.zeros_like(image), factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the mean of the grayscale image (one scalar), clamp to [0, 1]."""
    return _blend(image, jnp.mean(_luma(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with the grayscale image, clamp to [0, 1]."""
    return _blend(image, _luma(image), factor)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Shift hue by ``delta`` (fraction of a turn, in [-0.5, 0.5]) in HSV (dm-pix), clamp to [0, 1]."""
    return jnp.clip(pix.adjust_hue(image, delta), 0.0, 1.0)


def _jitter_params(uniforms: jax.Array, strengths: Any) -> tuple[jax.Array, ...]:
    order = jnp.argsort(uniforms[:4]).astype(jnp.int32)  # a uniformly random permutation
    low = [max(0.0, 1.0 - s) for s in strengths[:3]]
    factors = _between(uniforms[4:7], jnp.asarray(low), [1.0 + s for s in strengths[:3]])
    return order, factors, _between(uniforms[7], -strengths[3], strengths[3])


def sample_jitter_params(
    key: jax.Array, strengths: tuple[float, float, float, float]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """ColorJitter.get_params: (order int32[4] over 0=brightness 1=contrast 2=saturation 3=hue,
    factors float32[3] ~ U[max(0, 1 - s), 1 + s], hue delta float32[] ~ U[-h, h])."""
    return _jitter_params(jax.random.uniform(key, (8,)), strengths)


def apply_jitter(
    image: jax.Array,
    order: jax.Array,
    factors: jax.Array,
    hue_delta: jax.Array,
    with_hue: bool = True,
) -> jax.Array:
    """Apply brightness/contrast/saturation (``factors``) and hue in the given ``order``.

    Brightness, contrast and saturation are one blend with a selectable reference, so the order is
    realised as up to 3 blends before the (expensive) hue step and up to 3 after it; a slot that is
    not used blends with factor 1, which is exactly the identity. ``with_hue=False`` skips hue.
    """
    factors4 = jnp.concatenate([factors.astype(jnp.float32), jnp.ones((1,), jnp.float32)])
    hue_at = jnp.argmax(order == 3)

    def blend_slot(x: jax.Array, op: jax.Array) -> jax.Array:
        luma = _luma(x)  # reference: 0 (brightness), mean luma (contrast), luma (saturation)
        reference = (op == 1) * jnp.mean(luma) + (op == 2) * luma
        return _blend(x, reference, factors4[op])

    x = image
    for slot in range(3):
        x = blend_slot(x, jnp.where(slot < hue_at, order[slot], 3))
    if with_hue:
        x = adjust_hue(x, hue_delta)
    for slot in range(3):
        after = hue_at + 1 + slot
        x = blend_slot(x, jnp.where(after < 4, order[jnp.minimum(after, 3)], 3))
    return x


def jitter_from_uniforms(
    uniforms: jax.Array, image: jax.Array, strengths: Any, p: float
) -> jax.Array:
    """:func:`color_jitter` from 9 U[0, 1) draws (apply, 4 order keys, 3 factors, hue)."""
    if p == 0 or not any(strengths):
        return image
    order, factors, hue_delta = _jitter_params(uniforms[1:], strengths)
    jittered = apply_jitter(image, order, factors, hue_delta, with_hue=strengths[3] > 0)
    return jnp.where(uniforms[0] < p, jittered, image)


def color_jitter(
    key: jax.Array,
    image: jax.Array,
    strengths: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
    p: float = 0.8,
) -> jax.Array:
    """RandomApply([ColorJitter(*strengths)], p) on [H, W, 3] float32 in [0, 1]."""
    return jitter_from_uniforms(
        jax.random.uniform(key, (UNIFORMS_PER_OP["jitter"],)), image, strengths, p
    )


def grayscale_from_uniform(uniform: jax.Array, image: jax.Array, p: float) -> jax.Array:
    """:func:`random_grayscale` from one U[0, 1) draw."""
    return jnp.where(uniform < p, rgb_to_grayscale(image), image)


def random_grayscale(key: jax.Array, image: jax.Array, p: float = 0.2) -> jax.Array:
    """RandomGrayscale(p): [H, W, 3] -> [H, W, 3] (3 equal channels when applied)."""
    return grayscale_from_uniform(jax.random.uniform(key), image, p)


# ----------------------------------------------------------------------------- blur


def blur_kernel_size(height: int, width: int) -> int:
    """SimCLR rule: kernel = 2 * ((side // 10) // 2) + 1 over the smaller side, at least 3."""
    return 2 * max(min(height, width) // 10 // 2, 1) + 1


def _reflect_index(index: jax.Array, size: int) -> jax.Array:
    """Map integer positions onto 0..size-1 by reflection without edge repeat (numpy "reflect")."""
    period = max(2 * (size - 1), 1)
    index = jnp.abs(index) % period
    return jnp.where(index >= size, period - index, index)


def _blur_matrix(sigma: jax.Array, kernel_size: int, size: int) -> jax.Array:
    """[size, size] matrix of the reflect-padded 1-D Gaussian filter (torchvision's kernel)."""
    radius = kernel_size // 2
    taps = jnp.arange(-radius, radius + 1)
    weights = jnp.exp(-(taps.astype(jnp.float32) ** 2) / (2 * sigma**2))
    weights = weights / jnp.sum(weights)
    source = _reflect_index(jnp.arange(size)[:, None] + taps[None, :], size)  # [size, kernel]
    return jnp.einsum("k,yki->yi", weights, jax.nn.one_hot(source, size), precision=_HIGHEST)


def gaussian_blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of [H, W, C] with reflect padding (torchvision GaussianBlur).

    Same kernel as ``pix.gaussian_blur`` (exp(-x^2 / 2 sigma^2) over kernel_size taps, normalised),
    but written as two [H, H] / [W, W] matrices: under vmap with a per-example sigma, dm-pix's
    depthwise conv becomes a grouped conv with B*C groups, 15-30x slower on CPU.
    """
    height, width = image.shape[:2]
    if kernel_size // 2 >= min(height, width):
        raise SemsadError(
            f"blur kernel {kernel_size} is too large for a {height}x{width} image; "
            "use a smaller blur_kernel"
        )
    rows = _blur_matrix(sigma, kernel_size, height)
    cols = _blur_matrix(sigma, kernel_size, width)
    return jnp.einsum("yi,ijc,xj->yxc", rows, image, cols, precision=_HIGHEST)


def blur_from_uniforms(
    uniforms: jax.Array, image: jax.Array, sigma_range: Any, p: float, kernel_size: int | None
) -> jax.Array:
    """:func:`random_gaussian_blur` from 2 U[0, 1) draws (apply, sigma)."""
    if kernel_size is None:
        kernel_size = blur_kernel_size(image.shape[0], image.shape[1])
    blurred = gaussian_blur(image, _between(uniforms[1], *sigma_range), kernel_size)
    return jnp.where(uniforms[0] < p, blurred, image)


def random_gaussian_blur(
    key: jax.Array,
    image: jax.Array,
    sigma_range: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
) -> jax.Array:
    """Gaussian blur with sigma ~ U(sigma_range), applied with probability ``p``."""
    uniforms = jax.random.uniform(key, (UNIFORMS_PER_OP["blur"],))
    return blur_from_uniforms(uniforms, image, sigma_range, p, kernel_size)
