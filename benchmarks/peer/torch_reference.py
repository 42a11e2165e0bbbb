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

Also our discriminator s in PyTorch, for its peer row (:func:`make_discriminator`,
:func:`discriminator_loss`, :func:`sample_gamma`, :func:`make_optimizer`): the same CIFAR ResNet
(:class:`CifarResNet`, depth 18 or 34) with 6 input channels (reference, partner), ELU, the
config's norm and an MLP or linear head, SemSAD's gamma-weighted loss and AMSGrad with coupled L2
weight decay, as :mod:`semsad_jax.train.discriminator` builds them.

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


def group_count(channels: int) -> int:
    """GroupNorm groups as ours (``semsad_jax.models.resnet.group_count``)."""
    return math.gcd(channels, min(32, max(1, channels // 2)))


def make_norm(kind: str, channels: int) -> nn.Module:
    """Our norms in torch: ``batch`` (running statistics at inference), ``batch_transductive``
    (batch statistics always: no running statistics) or ``group``; eps 1e-5 as ours."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "batch_transductive":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels, eps=1e-5)
    raise ValueError(f"unknown norm {kind!r}; use batch, batch_transductive or group")


def make_activation(name: str) -> nn.Module:
    """``relu`` (torchvision's, in place) or ``elu`` (alpha 1, as ours)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; use relu or elu")


class BasicBlock(nn.Module):
    """torchvision BasicBlock: conv3x3-BN-act-conv3x3-BN + shortcut, act. NCHW.

    ``activation`` / ``norm``: torchvision's ReLU / BatchNorm by default (see :func:`make_norm`)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, activation: str = "relu", norm: str = "batch"
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, out_ch)
        self.relu = make_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), make_norm(norm, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class CifarResNet(nn.Module):
    """CIFAR ResNet-18/34 (widths w, 2w, 4w, 8w) with the CIFAR stem and a linear or MLP head.

    ``forward``: float [B, in_channels, H, W] -> [B, out_dim]. ``head="mlp"``: Linear(8w, 8w), act,
    Linear(8w, out_dim) (ours); ``"linear"``: Linear(8w, out_dim). Initialisation as torchvision
    (Kaiming-normal fan_out convolutions, norm scale 1 / bias 0, torch's default Linear init).
    """

    def __init__(
        self,
        width: int = 64,
        out_dim: int = 128,
        in_channels: int = 3,
        *,
        depth: int = 18,
        activation: str = "relu",
        norm: str = "batch",
        head: str = "linear",
    ):
        super().__init__()
        if depth not in STAGE_BLOCKS or head not in ("linear", "mlp"):
            raise ValueError(f"depth {depth!r} / head {head!r}: use 18 or 34 / linear or mlp")
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.relu = make_activation(activation)
        layers, in_ch = [], width
        for stage, (blocks, stride) in enumerate(zip(STAGE_BLOCKS[depth], (1, 2, 2, 2))):
            out_ch = width * 2**stage
            stage_blocks = []
            for i in range(blocks):
                block = BasicBlock(in_ch, out_ch, stride if i == 0 else 1, activation, norm)
                stage_blocks.append(block)
                in_ch = out_ch
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        if head == "mlp":
            self.fc = nn.Sequential(
                nn.Linear(in_ch, in_ch), make_activation(activation), nn.Linear(in_ch, out_dim)
            )
        else:
            self.fc = nn.Linear(in_ch, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class CifarResNet18(CifarResNet):
    """The authors' encoder network: :class:`CifarResNet` of depth 18, ReLU, BatchNorm, linear head
    (``width=64`` is exactly torchvision's ``resnet18`` with the CIFAR stem)."""

    def __init__(self, width: int = 64, out_dim: int = 128, in_channels: int = 3):
        super().__init__(width, out_dim, in_channels)


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


def make_discriminator(
    width: int,
    depth: int,
    *,
    activation: str = "elu",
    norm: str = "batch",
    head: str = "mlp",
    out_dim: int = 1,
) -> nn.Module:
    """Our pair discriminator s (``semsad_jax.models.build.make_discriminator``) in torch: a
    :class:`CifarResNet` on the two images of a pair stacked on channels (6 in: reference, partner)."""
    return CifarResNet(width, out_dim, 6, depth=depth, activation=activation, norm=norm, head=head)


def discriminator_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, gamma) -> torch.Tensor:
    """SemSAD's loss ``-(E_pos[log sig(s - log g)] + g * E_neg[log sig(log g - s)])`` in float32,
    as ``semsad_jax.method.losses.discriminator_loss`` (means over pairs and logits)."""
    gamma = torch.as_tensor(gamma, dtype=torch.float32, device=s_pos.device)
    log_gamma = gamma.log()
    pos = nn.functional.logsigmoid(s_pos.float() - log_gamma).mean()
    neg = nn.functional.logsigmoid(log_gamma - s_neg.float()).mean()
    return -(pos + gamma * neg)


def sample_gamma(mode: str, gamma_max: float, device) -> torch.Tensor:
    """One gamma per step on ``device`` (no host sync): ``uniform`` U(1, gamma_max) (paper) or
    ``integer`` 1 .. gamma_max - 1 (authors), as ``semsad_jax.method.losses.sample_gamma``."""
    if mode == "uniform":
        return torch.empty((), device=device).uniform_(1.0, float(gamma_max))
    if mode == "integer":
        return torch.randint(1, int(gamma_max), (), device=device).float()
    raise ValueError(f"unknown gamma mode {mode!r}; use uniform or integer")


def make_optimizer(
    params, name: str, learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``semsad_jax.train.optim.make_optimizer`` in torch at a constant learning rate: adam /
    amsgrad with coupled L2 (``Adam(weight_decay=...)``), adamw, sgd (momentum 0.9)."""
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(
            params, lr=learning_rate, weight_decay=weight_decay, amsgrad=name == "amsgrad"
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use adam, amsgrad, adamw or sgd")


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
