"""Batched augmentation on the device: random crop with padding and horizontal flip; additive perturbations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A CPU tensor ``t`` on ``device``. To a GPU it goes through pinned memory without blocking: a
    plain copy waits for every kernel already queued, so three of them a step (the crop offsets and
    the flips) would stop the host from queueing the next step while the GPU runs this one."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Pad by ``padding`` (reflect; torchvision's RandomCrop, as BackdoorBench uses it, pads with
    zeros) and crop back at a random offset per image.

    Args:
        x: images (N, C, H, W).
        padding: maximal shift in pixels; 0 returns ``x``.
        generator: source of the offsets (on the CPU; offsets are moved to ``x.device``).
    Returns:
        (N, C, H, W), same dtype and device.
    """
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    dy = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    dx = to_device(torch.randint(0, 2 * padding + 1, (n,), generator=generator), x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2. ``x``: (N, C, H, W)."""
    flip = to_device(torch.rand(x.shape[0], generator=generator) < 0.5, x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True) -> Tensor:
    """Random crop (``padding`` px) then random flip, batched. ``x``: (N, C, H, W)."""
    x = random_crop(x, padding, generator)
    return random_flip(x, generator) if flip else x


def add_clipped(x: Tensor, delta: Tensor) -> Tensor:
    """Images ``x`` (N, C, H, W) in [0, 1] plus a perturbation ``delta`` (broadcast to x), clipped to [0, 1]."""
    return (x + delta).clamp(0, 1)


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """Images (N, C, H, W) in [0, 1] with a masked trigger: (1 - mask) * x + mask * pattern.

    ``mask`` (1, H, W) and ``pattern`` (C, H, W), both in [0, 1] (Neural Cleanse's form).
    """
    return (1 - mask) * x + mask * pattern
