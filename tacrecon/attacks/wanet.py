"""WaNet: a smooth, fixed image warp is the trigger; randomly jittered warps keep their labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.train import TrainConfig, fit


def identity_grid(h: int, w: int) -> Tensor:
    """The sampling grid (1, H, W, 2) that reproduces an H x W image (align_corners=True).

    The last dimension is grid_sample's (x, y) order: the column coordinate, then the row one.
    """
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack((cols, rows), dim=-1)[None]


@ATTACKS.register("wanet")
@dataclass
class WaNet(Attack):
    """WaNet (Nguyen & Tran 2021, "WaNet - Imperceptible Warping-based Backdoor Attack",
    https://arxiv.org/abs/2102.10369).

    The trigger warps the image along a fixed smooth field: a random k x k control grid of
    displacements, normalised to mean magnitude 1, upsampled bicubically to H x W, scaled by
    ``s / H`` and added to the identity grid, then clamped to [-1, 1]. In training a fixed
    ``rate`` of the split is warped and relabelled, and in every batch a further
    ``cross_ratio * rate`` of the samples are warped with the backdoor grid plus fresh per-pixel
    noise of up to half a pixel and keep their labels ("noise mode"), which forces the network
    to learn the exact warp rather than any warping.

    Differences from BackdoorBench (defaults k 4, s 0.5, grid_rescale 1, cross_ratio 2):

    * The model is trained with the shared recipe ``cfg`` like every attack in the CPU
      protocol, not with BackdoorBench's 100 epochs at a constant lr 0.01 and its batch-level
      crop/rotation/flip.
    * The poisoned samples are a fixed set (``poison``), warped once before augmentation as in
      BackdoorBench; ``train`` returns their indices. Noise-mode samples are drawn afresh in each
      batch by fit's ``batch_hook``, which runs after augmentation, so they are warped after it,
      and they are not counted as poisoned (BackdoorBench flags them too in its saved set).
    * Noise-mode samples are drawn among the samples whose label the attack would change. For
      all-to-one this skips the target class, and with it every poisoned sample, which then never
      gets a second, label-keeping warp; for all-to-all every sample is a candidate, so a
      poisoned one gets a noise warp on top with the same chance as any other.
    * Images are warped in [0, 1], not normalised. The two agree: every grid point lies inside
      the image, where bilinear weights sum to 1, so the warp commutes with per-channel
      normalisation. Padding is ``border``: BackdoorBench's ``zeros`` pads normalised tensors
      with the mean colour but would pad [0, 1] images with black, and the rounding of a grid
      point at -1 or 1 must not bleed a dark frame (a second trigger) into the image.

    Args:
        k: side of the control grid; a larger k gives a less smooth warp.
        s: warping strength; the mean displacement along each axis is about 0.36 s pixels.
        grid_rescale: scale of the warped grid before clamping (1 keeps it).
        cross_ratio: noise-mode samples per poisoned sample in each batch.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = WaNet(target=0, rate=0.1)
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
    """

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0

    def validate(self) -> None:
        super().validate()
        if self.k < 1:
            raise TacreconError(f"k must be >= 1, got {self.k}")
        if self.s < 0 or self.grid_rescale <= 0 or self.cross_ratio < 0:
            raise TacreconError(f"need s >= 0, grid_rescale > 0 and cross_ratio >= 0, got "
                                f"{self.s}, {self.grid_rescale}, {self.cross_ratio}")

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        """Draw the backdoor grid (1, H, W, 2) from ``generator``."""
        self.bind(data.num_classes, data.input_shape)
        _, h, w = self.input_shape_
        control = torch.rand(1, 2, self.k, self.k, generator=generator) * 2 - 1
        control /= control.abs().mean()
        field = F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        grid = (identity_grid(h, w) + self.s * field / self._pixel_scale()) * self.grid_rescale
        self.grid_ = grid.clamp(-1, 1)

    def _pixel_scale(self) -> Tensor:
        """(W, H): a displacement of 1 / W (1 / H) in grid units is about half a pixel."""
        _, h, w = self.input_shape_
        return torch.tensor([float(w), float(h)])

    def noise_grids(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` noise-mode grids (n, H, W, 2): the backdoor grid plus fresh noise, clamped."""
        _, h, w = self.input_shape_
        noise = (torch.rand(n, h, w, 2, generator=generator) * 2 - 1) / self._pixel_scale()
        return (self.grid_.cpu() + noise).clamp(-1, 1)

    def warp(self, x: Tensor, grid: Tensor) -> Tensor:
        """``x`` (N, C, H, W) resampled at ``grid`` (1 or N, H, W, 2)."""
        if x.shape[-2:] != grid.shape[1:3]:
            raise TacreconError(f"the warp is {tuple(grid.shape[1:3])} but the images are {tuple(x.shape[-2:])}")
        grid = grid.to(x).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    def apply(self, x: Tensor) -> Tensor:
        if not hasattr(self, "grid_"):
            raise TacreconError("WaNet has no grid yet: call setup() or load_state_dict() first")
        return self.warp(x, self.grid_)

    def noise_mode(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """fit's ``batch_hook``: warp ~``cross_ratio * rate`` of the batch with noise grids.

        The count is rounded at random (up with the probability of the fraction), so its mean is
        ``cross_ratio * rate`` of the batch (fewer only if the batch has too few candidates);
        labels are kept.
        """
        expected = self.cross_ratio * self.rate * x.shape[0]
        n = int(expected) + int(float(torch.rand(1, generator=generator)) < expected % 1)
        candidates = torch.nonzero(self.eligible(y).cpu()).flatten()
        pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:n]]
        if pick.numel() == 0:
            return x, y
        grids = self.noise_grids(pick.numel(), generator)
        x, pick = x.clone(), pick.to(x.device)
        x[pick] = self.warp(x[pick], grids)
        return x, y

    def train(self, model: nn.Module, train: Split, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
        """Train on the fixed poisoned set plus per-batch noise mode; returns the poisoned indices."""
        poisoned, idx = self.poison(train, generator)
        hook = self.noise_mode if self.cross_ratio > 0 else None
        fit(model, poisoned, cfg, generator=generator, batch_hook=hook, desc=f"train {self.name}")
        return idx

    def state_dict(self) -> dict[str, Tensor]:
        return {"grid": self.grid_}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.grid_ = state["grid"]
