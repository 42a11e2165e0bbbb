"""Augmentation pipelines as data: :class:`AugmentSpec` and the named presets of the paper and code.

A spec describes torchvision's pipeline as the SemSAD authors used it: RandomResizedCrop ->
RandomHorizontalFlip -> RandomApply(ColorJitter) -> RandomGrayscale -> GaussianBlur. Specs are
frozen and hashable, so they can be static arguments of jitted functions
(:func:`semsad_jax.augment.apply.augment_batch`).
"""

from __future__ import annotations

import dataclasses

from semsad_jax.errors import SemsadError

__all__ = ["PRESETS", "AugmentSpec", "get_spec"]


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """One augmentation pipeline: crop -> flip -> colour jitter -> grayscale -> blur (hashable).

    ``crop_scale=None`` skips the crop; probabilities are in [0, 1]; ``jitter`` holds the
    ColorJitter strengths (brightness, contrast, saturation, hue); ``blur_kernel=None`` uses the
    SimCLR rule (about 10% of the image side, odd, at least 3), an int fixes the kernel size.
    """

    crop_scale: tuple[float, float] | None = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio", "jitter", "blur_sigma"):
            value = getattr(self, name)
            if (
                value is not None
            ):  # lists (e.g. from a config) -> tuples, so the spec stays hashable
                object.__setattr__(self, name, tuple(float(v) for v in value))
        _validate(self)

    @property
    def is_identity(self) -> bool:
        """True when the pipeline only converts uint8 to [0, 1] floats."""
        no_jitter = self.jitter_p == 0 or not any(self.jitter)
        no_random = self.flip_p == 0 and self.gray_p == 0 and self.blur_p == 0
        return self.crop_scale is None and no_jitter and no_random


def _validate(spec: AugmentSpec) -> None:
    def require(ok: bool, what: str) -> None:
        if not ok:
            raise SemsadError(f"invalid augmentation spec: {what}; fix the AugmentSpec or preset")

    for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
        require(0.0 <= getattr(spec, name) <= 1.0, f"{name}={getattr(spec, name)} is not in [0, 1]")
    if spec.crop_scale is not None:
        lo, hi = spec.crop_scale
        require(len(spec.crop_scale) == 2 and 0 < lo <= hi <= 1, f"crop_scale={spec.crop_scale}")
    lo, hi = spec.crop_ratio
    require(len(spec.crop_ratio) == 2 and 0 < lo <= hi, f"crop_ratio={spec.crop_ratio}")
    require(len(spec.jitter) == 4 and min(spec.jitter) >= 0, f"jitter={spec.jitter}")
    require(spec.jitter[3] <= 0.5, f"hue jitter {spec.jitter[3]} exceeds 0.5")
    lo, hi = spec.blur_sigma
    require(len(spec.blur_sigma) == 2 and 0 < lo <= hi, f"blur_sigma={spec.blur_sigma}")
    kernel = spec.blur_kernel
    require(kernel is None or (kernel > 0 and kernel % 2 == 1), f"blur_kernel={kernel} is not odd")


_SIMCLR_JITTER = (0.4, 0.4, 0.4, 0.1)
# Paper Table 6 links MoCo's blur, which the authors' code uses too: PIL GaussianBlur(radius=sigma),
# an untruncated Gaussian. 13 taps keep +-3 sigma at sigma=2 (the SimCLR rule gives 3 taps at 32 px).
_PIL_LIKE_BLUR_KERNEL = 13

PRESETS: dict[str, AugmentSpec] = {
    # SimCLR views for the encoder (paper Table 4 = authors' code).
    "encoder": AugmentSpec(),
    # SimCLR views with crops of at least 20% of the image: at 16 px a 0.08 crop is a 4 x 4 patch
    # (benchmarks: a better encoder per CPU-minute at small resolutions; not the paper's).
    "encoder_mild": AugmentSpec(crop_scale=(0.2, 1.0)),
    # Positive views for the discriminator (paper Table 7 = authors' code).
    "t_pos": AugmentSpec(crop_scale=(0.4, 1.0), gray_p=0.0),
    # Negative views: paper Table 6 (blur p 0.2) and the authors' code (blur p 0.5).
    "t_neg": AugmentSpec(gray_p=0.0, blur_p=0.2, blur_kernel=_PIL_LIKE_BLUR_KERNEL),
    "t_neg_authors": AugmentSpec(gray_p=0.0, blur_p=0.5, blur_kernel=_PIL_LIKE_BLUR_KERNEL),
    # Un-augmented images (authors: RandomResizedCrop(scale=(1, 1)), the full image for squares).
    "t_org": AugmentSpec(crop_scale=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0),
    # The rotation network's views (rotation.augment): crops of 60-100% and mirror images, no colour
    # change (Hendrycks et al. 2019 train with random crops and flips).
    "flip_crop": AugmentSpec(crop_scale=(0.6, 1.0), jitter_p=0.0, gray_p=0.0),
    # Paper Table 5 crop strengths, with flip and jitter as t_pos.
    "weak": AugmentSpec(crop_scale=(0.7, 1.0), gray_p=0.0),
    "strong": AugmentSpec(crop_scale=(0.3, 0.7), gray_p=0.0),
    "extreme": AugmentSpec(crop_scale=(0.08, 0.3), gray_p=0.0),
}


def get_spec(name_or_spec: str | AugmentSpec) -> AugmentSpec:
    """The preset called ``name_or_spec``, or the spec itself; SemsadError for unknown names."""
    if isinstance(name_or_spec, AugmentSpec):
        return name_or_spec
    if name_or_spec not in PRESETS:
        raise SemsadError(
            f"unknown augmentation preset {name_or_spec!r}; use one of {sorted(PRESETS)}"
        )
    return PRESETS[name_or_spec]
