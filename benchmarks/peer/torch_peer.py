"""PyTorch peer rows for ``throughput.py --torch``: the authors' encoder step, three ways.

- ``encoder_train_dataloader``: end to end as the authors run it: per-image PIL transforms on CPU
  DataLoader workers (:class:`torch_reference.ThreeViewDataset`), batches copied to the device,
  two forward passes, InfoNCE, Adam.
- ``encoder_train_device_aug``: data already on the device as uint8; each step gathers a random
  batch and makes two views with batched tensor ops (:mod:`torch_device_augment`).
- ``encoder_step_no_aug``: the step alone on two fixed, already augmented views on the device.
- ``augment_pil_one_process``: the authors' per-image PIL transforms alone, in one process (no
  workers, no model): the per-core rate of their CPU pipeline (a DataLoader with W workers gives at
  most W times this). Timing the DataLoader itself would mostly time its prefetch buffer.

bfloat16 rows use ``torch.autocast`` (the authors trained in float32). Items are augmented views
(two per image and step); the DataLoader also makes the authors' third, un-augmented view.
"""

from __future__ import annotations

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
) -> list[dict]:
    """Rows for the PyTorch peer (see module doc). ``images``: uint8 [N, H, W, 3], N >= batch.

    ``threads``: torch intra-op threads (default: torch's choice, the core count).
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
    return rows
