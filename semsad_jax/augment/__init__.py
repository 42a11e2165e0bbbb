"""On-device augmentation: torchvision-semantics ops, the named presets, and the batch entry point.

``from semsad_jax.augment import augment_batch, get_spec, AugmentSpec, PRESETS`` is the public API;
:mod:`~semsad_jax.augment.ops` holds the per-image primitives.
"""

from semsad_jax.augment.apply import augment_batch, augment_image, to_float
from semsad_jax.augment.ops import (
    CROP_ATTEMPTS,
    LUMA_WEIGHTS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_jitter,
    blur_kernel_size,
    color_jitter,
    flip,
    gaussian_blur,
    random_gaussian_blur,
    random_grayscale,
    random_resized_crop,
    resized_crop,
    rgb_to_grayscale,
    sample_crop_box,
    sample_jitter_params,
)
from semsad_jax.augment.presets import PRESETS, AugmentSpec, get_spec

__all__ = [
    "CROP_ATTEMPTS",
    "LUMA_WEIGHTS",
    "PRESETS",
    "AugmentSpec",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_jitter",
    "augment_batch",
    "augment_image",
    "blur_kernel_size",
    "color_jitter",
    "flip",
    "gaussian_blur",
    "get_spec",
    "random_gaussian_blur",
    "random_grayscale",
    "random_resized_crop",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_crop_box",
    "sample_jitter_params",
    "to_float",
]
