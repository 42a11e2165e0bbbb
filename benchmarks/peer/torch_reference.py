"""The SemSAD authors' encoder training in PyTorch, for the peer comparison (needs torch + PIL).

What the authors' ``ImageData/train_encoder.py`` does, rebuilt without torchvision (its PyPI wheel
does not load beside the CPU torch build used here; where torchvision imports, it is used instead):

- model: torchvision ``resnet18(num_classes=128)`` with the CIFAR stem (3x3 conv stride 1, no
  max-pool): :class:`CifarResNet18` (``width=64`` is exactly that network);
- data: a map-style dataset of uint8 images; each item is ``(t_org(x), t_1(x), t_1(x))`` made per
  image with PIL on CPU DataLoader workers, where ``t_1`` = RandomResizedCrop(size, scale .08-1),
  RandomHorizontalFlip(.5), RandomApply([ColorJitter(.4, .4, .4, .1)], .8), RandomGrayscale(.2),
  ToTensor and ``t_org`` = RandomResizedCrop(size, scale=(1, 1)), ToTensor;
- step: two forward passes ``h1 = h(v1)``, ``h2 = h(v2)``, one-directional InfoNCE with tau 0.5 on
  L2-normalised outputs, Adam(lr 3e-4, weight_decay 1e-6).

The PIL transforms below follow torchvision 0.x ``transforms`` / ``functional_pil`` step by step,
drawing their random numbers from torch's generator as torchvision does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn


def has_torchvision() -> bool:
    """True when torchvision imports (the GPU machine); False here."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- model


class BasicBlock(nn.Module):
    """torchvision BasicBlock: conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. NCHW."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet18(nn.Module):
    """ResNet-18 (widths w, 2w, 4w, 8w) with the CIFAR stem and a linear 8w -> out_dim head.

    ``forward``: float [B, 3, H, W] -> [B, out_dim]. Initialisation as torchvision (Kaiming-normal
    fan_out convolutions, BN scale 1 / bias 0, torch's default Linear init).
    """

    def __init__(self, width: int = 64, out_dim: int = 128, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers, in_ch = [], width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out_ch = width * 2**stage
            layers.append(
                nn.Sequential(BasicBlock(in_ch, out_ch, stride), BasicBlock(out_ch, out_ch, 1))
            )
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_encoder(width: int = 64, out_dim: int = 128) -> nn.Module:
    """The authors' encoder: torchvision resnet18 + CIFAR stem when torchvision imports and
    ``width == 64``, else :class:`CifarResNet18` (the same network for width 64)."""
    if width == 64 and has_torchvision():
        from torchvision.models.resnet import resnet18

        model = resnet18(num_classes=out_dim)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        return model
    return CifarResNet18(width=width, out_dim=out_dim)


def nce_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The authors' ``utils.nce``: rows of normalised h1 against columns of normalised h2."""
    h1 = h1.float() / h1.float().norm(dim=1, keepdim=True)
    h2 = h2.float() / h2.float().norm(dim=1, keepdim=True)
    logits = h1 @ h2.t() / temperature
    return nn.functional.cross_entropy(logits, torch.arange(len(h1), device=h1.device))


# ----------------------------------------------------------------------------- PIL transforms


class RandomResizedCrop:
    """torchvision RandomResizedCrop(size, scale, ratio) on a PIL image, bilinear."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def get_params(self, img: Image.Image) -> tuple[int, int, int, int]:
        width, height = img.size
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                i = torch.randint(0, height - h + 1, size=(1,)).item()
                j = torch.randint(0, width - w + 1, size=(1,)).item()
                return i, j, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: Image.Image) -> Image.Image:
        i, j, h, w = self.get_params(img)
        return img.crop((j, i, j + w, i + h)).resize((self.size, self.size), Image.BILINEAR)


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img


def adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """torchvision functional_pil.adjust_hue: shift the uint8 H channel of PIL's HSV (mod 256)."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h += np.uint8(int(hue_factor * 255) % 256)  # astype(uint8) of a negative value wraps
    return Image.merge("HSV", (Image.fromarray(np_h, "L"), s, v)).convert(img.mode)


class ColorJitter:
    """torchvision ColorJitter(brightness, contrast, saturation, hue) on a PIL image."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float):
        self.ranges = [(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)]
        self.hue = (-hue, hue)

    def __call__(self, img: Image.Image) -> Image.Image:
        fn_idx = torch.randperm(4)
        b, c, s = (float(torch.empty(1).uniform_(lo, hi)) for lo, hi in self.ranges)
        h = float(torch.empty(1).uniform_(self.hue[0], self.hue[1]))
        for fn_id in fn_idx:
            if fn_id == 0:
                img = ImageEnhance.Brightness(img).enhance(b)
            elif fn_id == 1:
                img = ImageEnhance.Contrast(img).enhance(c)
            elif fn_id == 2:
                img = ImageEnhance.Color(img).enhance(s)
            else:
                img = adjust_hue(img, h)
        return img


class RandomApply:
    def __init__(self, transform: Callable, p: float):
        self.transform, self.p = transform, p

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p < torch.rand(1):
            return img
        return self.transform(img)


class RandomGrayscale:
    def __init__(self, p: float = 0.2):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            gray = np.array(img.convert("L"), dtype=np.uint8)
            return Image.fromarray(np.dstack([gray, gray, gray]), "RGB")
        return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision ToTensor: uint8 HWC PIL -> float32 CHW in [0, 1]."""
    array = torch.from_numpy(np.array(img, np.uint8, copy=True))
    return array.permute(2, 0, 1).contiguous().float().div(255)


class Compose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


def authors_transforms(size: int, prefer_torchvision: bool = True) -> tuple[Callable, Callable]:
    """(t_1, t_org) of the authors' encoder loader (torchvision's classes when available)."""
    if prefer_torchvision and has_torchvision():
        from torchvision import transforms as T

        jitter = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
        t_1 = T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(0.5),
                T.RandomApply([jitter], p=0.8),
                T.RandomGrayscale(0.2),
                T.ToTensor(),
            ]
        )
        t_org = T.Compose([T.RandomResizedCrop(size, scale=(1, 1)), T.ToTensor()])
        return t_1, t_org
    t_1 = Compose(
        [
            RandomResizedCrop(size),
            RandomHorizontalFlip(0.5),
            RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), 0.8),
            RandomGrayscale(0.2),
            to_tensor,
        ]
    )
    t_org = Compose([RandomResizedCrop(size, scale=(1.0, 1.0)), to_tensor])
    return t_1, t_org


class ThreeViewDataset(torch.utils.data.Dataset):
    """uint8 images [N, H, W, 3] -> items ``((t_org(x), t_1(x), t_1(x)), 0)`` as the authors'."""

    def __init__(self, images: np.ndarray, prefer_torchvision: bool = True):
        self.images = images
        self.t_1, self.t_org = authors_transforms(images.shape[1], prefer_torchvision)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return (self.t_org(img), self.t_1(img), self.t_1(img)), 0
