"""BadNets: a small fixed patch pasted onto the image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.errors import TacreconError

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


@ATTACKS.register("badnets")
@dataclass
class BadNets(Attack):
    """BadNets (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning
    Model Supply Chain", https://arxiv.org/abs/1708.06733).

    The default is BackdoorBench's trigger: a 3x3 white square in the bottom-right corner (rows
    and columns 29-31 of a 32x32 image), pasted over the pixels (not blended).

    Args:
        patch_size: side of the square patch in pixels.
        location: one of ``bottom_right``, ``bottom_left``, ``top_right``, ``top_left``, ``center``.
        pattern: ``white`` (all ones), ``checker`` (alternating 1/0, BackdoorBench's grid
            variant) or ``random`` (fixed random binary pattern drawn from ``pattern_seed``).
        pattern_seed: seed of the ``random`` pattern.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = BadNets(target=0, rate=0.1)
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> triggered = attack(data.test.x)
    """

    patch_size: int = 3
    location: str = "bottom_right"
    pattern: str = "white"
    pattern_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if self.patch_size < 1:
            raise TacreconError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.location not in CORNERS:
            raise TacreconError(f"location must be one of {', '.join(CORNERS)}, got {self.location!r}")
        if self.pattern not in ("white", "checker", "random"):
            raise TacreconError(f"pattern must be white, checker or random, got {self.pattern!r}")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        c, h, w = self.input_shape_
        if self.patch_size > min(h, w):
            raise TacreconError(f"patch_size {self.patch_size} does not fit a {h}x{w} image")
        self.mask_, self.patch_ = self._trigger(c, h, w)

    def _trigger(self, c: int, h: int, w: int) -> tuple[Tensor, Tensor]:
        """The paste mask (1, H, W) and the pattern (C, H, W) it pastes."""
        p = self.patch_size
        top = {"top": 0, "bottom": h - p}.get(self.location.split("_")[0], (h - p) // 2)
        left = {"left": 0, "right": w - p}.get(self.location.split("_")[-1], (w - p) // 2)
        if self.pattern == "white":
            square = torch.ones(p, p)
        elif self.pattern == "checker":
            square = ((torch.arange(p)[:, None] + torch.arange(p)[None, :]) % 2 == 0).float()
        else:
            g = torch.Generator().manual_seed(self.pattern_seed)
            square = torch.randint(0, 2, (p, p), generator=g).float()
        mask, patch = torch.zeros(1, h, w), torch.zeros(c, h, w)
        mask[:, top:top + p, left:left + p] = 1
        patch[:, top:top + p, left:left + p] = square
        return mask, patch

    def apply(self, x: Tensor) -> Tensor:
        mask, patch = self.mask_.to(x), self.patch_.to(x)
        return x * (1 - mask) + patch * mask
