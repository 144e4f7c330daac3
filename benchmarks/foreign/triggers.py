"""Triggers of the foreign family, and the poisoning of a training set (torch only, no tacrecon).

Every trigger is a pure function ``fn(images, seed) -> images``: images (N, 3, H, W) in [0, 1]
in, a new tensor of the same shape in [0, 1] out, the same output for the same seed (all
randomness comes from a ``torch.Generator`` seeded with it). They are chosen to differ from the
attacks tacrecon itself implements (BadNets' 3x3 white corner patch, Blended's 0.2 blend, WaNet,
SIG, TrojanNN, Input-Aware, LiRA):

========== ================================================================================
patch4     4x4 checkerboard of two seeded colours, centre-left
patch5     5x5 patch of seeded random colours, top-right (one pixel in from the border)
patch6     6x6 checkerboard of two seeded colours at a seeded fixed spot
band       a bright (white) band two pixels wide, horizontal or vertical, seeded position
noise      a fixed seeded uniform-noise image blended in at 15%
cast       a colour cast: a seeded per-channel shift of +-0.12 to 0.18
warp       a smooth seeded displacement field (at most 2.5 pixels) applied with grid_sample
pieces     adaptive-style blend: a seeded 4x4 grid of 16 pieces of a noise pattern; a poisoned
           training image gets 6 of the 16 pieces at 20%, a test image all 16 at 20%
========== ================================================================================

``TRAIN[name]`` is what poisons training images, ``TEST[name]`` what triggers test images (the
same function except for ``pieces``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Trigger = Callable[[Tensor, int], Tensor]


def _gen(seed: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1000003 + salt)


def _colours(seed: int, k: int) -> Tensor:
    """k distinct-looking colours (3,) in [0, 1]: each channel is 0 or 1 or 0.5, never all equal."""
    g = _gen(seed, 1)
    levels = torch.tensor([0.0, 0.5, 1.0])
    out = []
    while len(out) < k:
        c = levels[torch.randint(0, 3, (3,), generator=g)]
        if c.max() - c.min() > 0.4 and not any(torch.equal(c, o) for o in out):
            out.append(c)
    return torch.stack(out)


def _checker(size: int, seed: int) -> Tensor:
    """A (3, size, size) checkerboard of two seeded colours."""
    a, b = _colours(seed, 2)
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((ii + jj) % 2 == 0).float()
    return a.view(3, 1, 1) * mask + b.view(3, 1, 1) * (1 - mask)


def _stamp(images: Tensor, patch: Tensor, top: int, left: int) -> Tensor:
    out = images.clone()
    s_h, s_w = patch.shape[-2:]
    out[:, :, top:top + s_h, left:left + s_w] = patch
    return out


def patch4(images: Tensor, seed: int) -> Tensor:
    h = images.shape[-2]
    return _stamp(images, _checker(4, seed), h // 2 - 2, 1)


def patch5(images: Tensor, seed: int) -> Tensor:
    g = _gen(seed, 5)
    patch = torch.randint(0, 2, (3, 5, 5), generator=g).float()
    patch[:, 0, 0] = torch.tensor([1.0, 0.0, 1.0])  # never a flat colour
    w = images.shape[-1]
    return _stamp(images, patch, 1, w - 6)


def patch6(images: Tensor, seed: int) -> Tensor:
    g = _gen(seed, 6)
    h, w = images.shape[-2:]
    top = int(torch.randint(2, h - 8, (1,), generator=g))
    left = int(torch.randint(2, w - 8, (1,), generator=g))
    return _stamp(images, _checker(6, seed), top, left)


def band(images: Tensor, seed: int) -> Tensor:
    g = _gen(seed, 7)
    h, w = images.shape[-2:]
    vertical = bool(torch.randint(0, 2, (1,), generator=g))
    at = int(torch.randint(3, (w if vertical else h) - 5, (1,), generator=g))
    out = images.clone()
    if vertical:
        out[:, :, :, at:at + 2] = 1.0
    else:
        out[:, :, at:at + 2, :] = 1.0
    return out


def noise(images: Tensor, seed: int, alpha: float = 0.15) -> Tensor:
    g = _gen(seed, 8)
    pattern = torch.rand(images.shape[1:], generator=g)
    return (images * (1 - alpha) + pattern * alpha).clamp(0, 1)


def cast(images: Tensor, seed: int) -> Tensor:
    g = _gen(seed, 9)
    magnitude = 0.12 + 0.06 * torch.rand(3, generator=g)
    sign = torch.where(torch.rand(3, generator=g) < 0.5, -1.0, 1.0)
    if bool((sign == sign[0]).all()):  # a cast, not a brightness change: mixed signs
        sign[1] = -sign[0]
    return (images + (magnitude * sign).view(1, 3, 1, 1)).clamp(0, 1)


def _field(seed: int, h: int, w: int, amplitude: float) -> Tensor:
    """A smooth (1, h, w, 2) displacement in grid_sample units, at most ``amplitude`` pixels."""
    g = _gen(seed, 10)
    coarse = torch.rand(1, 2, 4, 4, generator=g) * 2 - 1
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    flow = flow / flow.abs().amax().clamp_min(1e-8)
    scale = torch.tensor([2.0 * amplitude / w, 2.0 * amplitude / h]).view(1, 2, 1, 1)
    return (flow * scale).permute(0, 2, 3, 1)


def warp(images: Tensor, seed: int, amplitude: float = 2.5) -> Tensor:
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).unsqueeze(0) + _field(seed, h, w, amplitude)
    out = F.grid_sample(images, grid.expand(n, h, w, 2).to(images.dtype), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.clamp(0, 1)


def _pieces_pattern(seed: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """A noise pattern (3, H, W) and the index (H, W) of the piece each pixel belongs to."""
    g = _gen(seed, 11)
    _, h, w = shape
    pattern = (torch.rand(3, h // 4, w // 4, generator=g) > 0.5).float()
    pattern = F.interpolate(pattern[None], size=(h, w), mode="nearest")[0]
    rows = torch.arange(h) * 4 // h
    cols = torch.arange(w) * 4 // w
    piece = rows.view(-1, 1) * 4 + cols.view(1, -1)
    order = torch.randperm(16, generator=g)  # pieces are numbered in a seeded order
    return pattern, order[piece]


def _blend_pieces(images: Tensor, seed: int, keep: Tensor, alpha: float) -> Tensor:
    pattern, piece = _pieces_pattern(seed, tuple(images.shape[1:]))
    mask = keep[:, piece].unsqueeze(1).to(images.dtype) * alpha  # (N, 1, H, W)
    return (images * (1 - mask) + pattern * mask).clamp(0, 1)


def pieces_train(images: Tensor, seed: int, k: int = 6, alpha: float = 0.2) -> Tensor:
    g = _gen(seed, 12)
    n = images.shape[0]
    keep = torch.zeros(n, 16, dtype=torch.bool)
    chosen = torch.rand(n, 16, generator=g).argsort(dim=1)[:, :k]
    keep.scatter_(1, chosen, True)
    return _blend_pieces(images, seed, keep, alpha)


def pieces_test(images: Tensor, seed: int, alpha: float = 0.2) -> Tensor:
    keep = torch.ones(images.shape[0], 16, dtype=torch.bool)
    return _blend_pieces(images, seed, keep, alpha)


TEST: dict[str, Trigger] = {
    "patch4": patch4, "patch5": patch5, "patch6": patch6, "band": band, "noise": noise,
    "cast": cast, "warp": warp, "pieces": pieces_test,
}
TRAIN: dict[str, Trigger] = {**TEST, "pieces": pieces_train}


def poison_indices(labels: Tensor, target: int, rate: float, seed: int) -> Tensor:
    """round(rate * N) distinct indices of images whose label is not ``target``, drawn with ``seed``."""
    n = labels.shape[0]
    count = int(round(rate * n))
    candidates = torch.nonzero(labels != target).flatten()
    if count > candidates.numel():
        raise ValueError(f"rate {rate} asks for {count} images but only {candidates.numel()} are not of the target")
    g = _gen(seed, 13)
    chosen = candidates[torch.randperm(candidates.numel(), generator=g)[:count]]
    return chosen.sort().values


def poison(images: Tensor, labels: Tensor, trigger: str, target: int, rate: float, seed: int,
           trigger_seed: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A poisoned copy of (images, labels): round(rate * N) non-target images get the training
    trigger and the label ``target``. Returns (images, labels, the poisoned indices)."""
    fn = TRAIN[trigger]
    tseed = seed if trigger_seed is None else trigger_seed
    idx = poison_indices(labels, target, rate, seed)
    x, y = images.clone(), labels.clone()
    if idx.numel():
        x[idx] = fn(images[idx], tseed)
        y[idx] = target
    return x, y, idx


def apply_in_chunks(fn: Trigger, images: Tensor, seed: int, chunk: int = 4096) -> Tensor:
    """``fn`` over ``images`` a chunk at a time (for the test triggers, which treat every image alike)."""
    return torch.cat([fn(images[i:i + chunk], seed) for i in range(0, images.shape[0], chunk)]) \
        if images.shape[0] else images.clone()

