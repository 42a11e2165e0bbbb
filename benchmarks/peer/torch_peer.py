"""PyTorch peer rows for ``throughput.py --torch``: the authors' encoder step, three ways, and
our discriminator step and feature bank.

- ``encoder_train_dataloader``: end to end as the authors run it: per-image PIL transforms on CPU
  DataLoader workers (:class:`torch_reference.ThreeViewDataset`), batches copied to the device,
  two forward passes, InfoNCE, Adam.
- ``encoder_train_device_aug``: data already on the device as uint8; each step gathers a random
  batch and makes two views with batched tensor ops (:mod:`torch_device_augment`).
- ``encoder_step_no_aug``: the step alone on two fixed, already augmented views on the device.
- ``augment_pil_one_process``: the authors' per-image PIL transforms alone, in one process (no
  workers, no model): the per-core rate of their CPU pipeline (a DataLoader with W workers gives at
  most W times this). Timing the DataLoader itself would mostly time its prefetch buffer.
- ``discriminator_train`` (``disc``): our discriminator step in PyTorch (:class:`DiscSettings`:
  the CIFAR ResNet with 6 input channels, ELU, the config's norm and head, SemSAD's gamma-weighted
  loss, AMSGrad) on FIXED pairs already made on the device: B positive and B negative pairs
  [B, 6, H, W] made once with :func:`device_augment` (like ``encoder_step_no_aug``), so it times
  the step alone; ours also samples and augments its pairs inside the step. ``norm="batch"``: one
  forward pass of the 2B pairs (as ours); ``batch_transductive``: two. Items = pairs (2B).
- ``feature_bank`` (``bank``): the authors' encoder (linear head) in eval mode under
  ``torch.inference_mode`` over the bank's uint8 images in batches of ``bank_batch`` (ours:
  ``feature_batch_size``): each batch copied to the device, / 255, the head's output
  L2-normalised and copied back to the host (as ``compute_features``; no padding of the last
  batch, which eager torch does not need). Items = images.

bfloat16 rows use ``torch.autocast`` (the authors trained in float32). Items are augmented views
(two per image and step); the DataLoader also makes the authors' third, un-augmented view.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

import numpy as np
import torch

from benchmarks.peer import torch_reference
from benchmarks.peer.torch_device_augment import device_augment
from benchmarks.timing import row, time_call

TEMPERATURE = 0.5


def torch_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync_fn(device: torch.device):
    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    return sync


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def make_step(width: int, device: torch.device, dtype: str, seed: int = 0):
    """(step(v1, v2) -> loss, model) of the authors' encoder step at ``width``."""
    torch.manual_seed(seed)
    model = torch_reference.make_encoder(width=width).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-6)

    def step(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        with _autocast(device, dtype):
            h1, h2 = model(v1), model(v2)
        loss = torch_reference.nce_loss(h1, h2, TEMPERATURE)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model


def _loader(images: np.ndarray, batch: int, workers: int, device: torch.device, seed: int):
    dataset = torch_reference.ThreeViewDataset(images)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
        # spawn, not fork: the parent runs JAX's thread pools (fork may deadlock there)
        multiprocessing_context="spawn" if workers > 0 else None,
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))  # endless, epoch after epoch


@dataclasses.dataclass(frozen=True)
class DiscSettings:
    """Our ``discriminator`` config section, what the torch peer of its step reads (defaults: ours)."""

    batch: int = 128
    width: int = 64
    depth: int = 34
    activation: str = "elu"
    norm: str = "batch"
    head: str = "mlp"
    out_dim: int = 1
    optimizer: str = "amsgrad"
    learning_rate: float = 5e-5
    weight_decay: float = 1e-6
    gamma: str = "uniform"
    gamma_max: float = 10.0

    @classmethod
    def from_section(cls, section: Any) -> DiscSettings:
        """From a ``config.discriminator`` section (anything with these attributes)."""
        names = {
            f.name: "batch_size" if f.name == "batch" else f.name for f in dataclasses.fields(cls)
        }
        return cls(**{name: getattr(section, key) for name, key in names.items()})


def make_disc_step(settings: DiscSettings, device: torch.device, dtype: str, seed: int = 0):
    """(step(pos, neg) -> loss, model): one discriminator step on positive and negative pairs
    float [B, 6, H, W] (see the module doc)."""
    torch.manual_seed(seed)
    model = torch_reference.make_discriminator(
        settings.width,
        settings.depth,
        activation=settings.activation,
        norm=settings.norm,
        head=settings.head,
        out_dim=settings.out_dim,
    )
    model = model.to(device).train()
    opt = torch_reference.make_optimizer(
        model.parameters(), settings.optimizer, settings.learning_rate, settings.weight_decay
    )
    two_passes = settings.norm == "batch_transductive"

    def step(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        model.zero_grad()
        gamma = torch_reference.sample_gamma(settings.gamma, settings.gamma_max, device)
        with _autocast(device, dtype):
            if two_passes:
                s_pos, s_neg = model(pos), model(neg)
            else:
                out = model(torch.cat([pos, neg]))
                s_pos, s_neg = out[: len(pos)], out[len(pos) :]
        loss = torch_reference.discriminator_loss(s_pos, s_neg, gamma)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model


def fixed_pairs(on_device: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B positive pairs (two views of one image) and B negative pairs (views of two images),
    float [B, 6, H, W] on the device, channels (reference, partner), made once."""
    device = on_device.device
    idx = torch.randint(0, len(on_device), (batch,), device=device)
    other = (idx + torch.randint(1, len(on_device), (batch,), device=device)) % len(on_device)
    x, y = on_device[idx], on_device[other]
    pos = torch.cat([device_augment(x), device_augment(x)], dim=1)
    neg = torch.cat([device_augment(x), device_augment(y)], dim=1)
    return pos, neg


def bank_features(
    model: torch.nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    dtype: str = "float32",
) -> np.ndarray:
    """L2-normalised outputs float32 [N, D] of ``model`` (eval mode) on uint8 [N, H, W, 3] host
    images, in batches of ``batch_size``: each batch to the device, / 255, back to the host."""
    out = []
    with torch.inference_mode(), _autocast(device, dtype):
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).to(device)
            z = model(x.permute(0, 3, 1, 2).float().div(255)).float()
            out.append(torch.nn.functional.normalize(z, dim=1, eps=1e-12).cpu())
    return torch.cat(out).numpy()


def default_workers() -> int:
    """The authors' default of 6 DataLoader workers, capped at the CPU count."""
    return max(0, min(6, os.cpu_count() or 1))


def bench_torch(
    images: np.ndarray,
    *,
    batch: int,
    width: int,
    dtypes: list[str],
    workers: int,
    timing: dict,
    benches: tuple[str, ...] = ("dataloader", "device_aug", "step", "augment"),
    threads: int | None = None,
    seed: int = 0,
    disc: DiscSettings | None = None,
    bank_images: int | None = None,
    bank_batch: int = 1024,
) -> list[dict]:
    """Rows for the PyTorch peer (see module doc). ``images``: uint8 [N, H, W, 3], N >= batch.

    ``threads``: torch intra-op threads (default: torch's choice, the core count). ``disc``: the
    discriminator's settings for ``"disc"`` (default :class:`DiscSettings` at ``batch`` and
    ``width``, depth 18). ``bank_images`` (default N: the images cycled as ours) and
    ``bank_batch``: the feature bank of ``"bank"`` (encoder at ``width``).
    """
    device = torch_device()
    if threads:
        torch.set_num_threads(threads)
    sync = _sync_fn(device)
    torch.manual_seed(seed)
    rows = []
    meta = dict(
        framework="torch",
        device=str(device),
        torch=torch.__version__,
        torch_threads=torch.get_num_threads(),
        torchvision=torch_reference.has_torchvision(),
        width=width,
        batch=batch,
        image_size=int(images.shape[1]),
    )
    on_device = torch.from_numpy(images).to(device)
    if "augment" in benches:  # one process, no workers: the per-core rate of the PIL pipeline
        dataset = torch_reference.ThreeViewDataset(images)
        order = itertools.cycle(range(len(images)))
        t = time_call(
            lambda: [dataset[next(order)] for _ in range(batch)], sync=lambda _: None, **timing
        )
        rows.append(row("augment_pil_one_process", "float32", 2 * batch, "views", t, **meta))
    for dtype in dtypes:
        step, _ = make_step(width, device, dtype, seed)
        if "step" in benches:
            idx = torch.randint(0, len(on_device), (batch,), device=device)
            v1, v2 = device_augment(on_device[idx]), device_augment(on_device[idx])
            t = time_call(lambda v1=v1, v2=v2, step=step: step(v1, v2), sync=sync, **timing)
            rows.append(row("encoder_step_no_aug", dtype, 2 * batch, "views", t, **meta))
        if "device_aug" in benches:

            def device_aug_step(step=step):
                idx = torch.randint(0, len(on_device), (batch,), device=device)
                x = on_device[idx]
                return step(device_augment(x), device_augment(x))

            t = time_call(device_aug_step, sync=sync, **timing)
            rows.append(row("encoder_train_device_aug", dtype, 2 * batch, "views", t, **meta))
        if "dataloader" in benches:
            batches = _loader(images, batch, workers, device, seed)

            def loader_step(step=step, batches=batches):
                (_, v1, v2), _ = next(batches)
                v1 = v1.to(device, non_blocking=True)
                v2 = v2.to(device, non_blocking=True)
                return step(v1, v2)

            t = time_call(loader_step, sync=sync, **timing)
            rows.append(
                row(
                    "encoder_train_dataloader",
                    dtype,
                    2 * batch,
                    "views",
                    t,
                    workers=workers,
                    **meta,
                )
            )
        if "disc" in benches:
            settings = disc or DiscSettings(batch=batch, width=width, depth=18)
            disc_step, _ = make_disc_step(settings, device, dtype, seed)
            pos, neg = fixed_pairs(on_device, settings.batch)
            t = time_call(lambda s=disc_step, p=pos, n=neg: s(p, n), sync=sync, **timing)
            disc_meta = meta | dict(
                width=settings.width,
                batch=settings.batch,
                depth=settings.depth,
                norm=settings.norm,
                pairs="fixed, made once on the device",
            )
            rows.append(
                row("discriminator_train", dtype, 2 * settings.batch, "pairs", t, **disc_meta)
            )
        if "bank" in benches:
            torch.manual_seed(seed)
            encoder = torch_reference.make_encoder(width=width).to(device).eval()
            count = len(images) if bank_images is None else bank_images
            bank = images[np.arange(count) % len(images)]
            t = time_call(
                lambda e=encoder, b=bank, d=dtype: bank_features(e, b, bank_batch, device, d),
                sync=lambda _: None,  # bank_features ends on the host
                **(timing | {"calls": 1, "warmup": 1}),  # one call = the whole bank, as ours
            )
            bank_meta = meta | dict(batch=bank_batch)
            rows.append(row("feature_bank", dtype, count, "images", t, **bank_meta))
    return rows
