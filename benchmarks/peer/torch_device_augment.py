"""SimCLR views made with batched torch tensor ops on the training device (peer variant).

Not the authors' pipeline (theirs is per-image PIL on CPU workers, :mod:`torch_reference`): this is
what a PyTorch user would write to keep augmentation on the GPU, so the comparison with our
on-device augmentation is like for like. Per example: a random resized crop (scale .08-1, ratio
3/4-4/3, one draw clamped to fit, bilinear via ``grid_sample``) with a random horizontal flip folded
into the same affine grid; with p .8 brightness, contrast, saturation (factors U[.6, 1.4]) and hue
(U[-.1, .1]) in a fixed order (torchvision permutes the order; the cost is the same); grayscale with
p .2. uint8 [B, H, W, 3] on the device -> float [B, 3, H, W] in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), (h / 6.0) % 1.0)
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack(
        [
            torch.stack(c, 1)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ],
        0,
    )  # [6, B, 3, H, W]
    index = i.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1)
    return table.gather(0, index).squeeze(0)


def _crop_flip_grid(batch: int, height: int, width: int, device) -> torch.Tensor:
    area = height * width * torch.empty(batch, device=device).uniform_(0.08, 1.0)
    log_ratio = torch.empty(batch, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(1, width)
    h = torch.sqrt(area / aspect).clamp(1, height)
    cx = torch.rand(batch, device=device) * (width - w) + w / 2
    cy = torch.rand(batch, device=device) * (height - h) + h / 2
    flip = torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = flip * w / width
    theta[:, 0, 2] = 2 * cx / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = 2 * cy / height - 1
    return F.affine_grid(theta, [batch, 3, height, width], align_corners=False)


def _per_example(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def device_augment(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (any device) -> augmented float32 [B, 3, H, W] on the same device."""
    batch, height, width, _ = images.shape
    dev = images.device
    x = images.permute(0, 3, 1, 2).float().div(255)
    x = F.grid_sample(
        x,
        _crop_flip_grid(batch, height, width, dev),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    u = lambda lo, hi: _per_example(torch.empty(batch, device=dev).uniform_(lo, hi))
    j = (x * u(0.6, 1.4)).clamp(0, 1)
    c = u(0.6, 1.4)
    j = (c * j + (1 - c) * _luma(j).mean((2, 3), keepdim=True)).clamp(0, 1)
    s = u(0.6, 1.4)
    j = (s * j + (1 - s) * _luma(j)).clamp(0, 1)
    hsv = _rgb_to_hsv(j)
    hue = (hsv[:, 0:1] + u(-0.1, 0.1)) % 1.0
    j = _hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], 1))
    x = torch.where(_per_example(torch.rand(batch, device=dev) < 0.8), j, x)
    gray = _luma(x).expand(-1, 3, -1, -1)
    return torch.where(_per_example(torch.rand(batch, device=dev) < 0.2), gray, x)
