"""SIG: a clean-label attack with a horizontal sinusoidal signal added to target-class images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.errors import TacreconError


@ATTACKS.register("sig")
@dataclass
class SIG(Attack):
    """SIG (Barni et al. 2019, "A New Backdoor Attack in CNNs by Training Set Corruption Without
    Label Poisoning", https://arxiv.org/abs/1902.11237).

    Adds ``delta * sin(2 pi j f / W)`` to every channel of pixel column j (vertical stripes).
    Clean-label: only images of the target class are poisoned and their labels are kept. As in
    BackdoorBench, ``rate`` is a fraction of the whole training split (0.1 on CIFAR-10 = all
    5,000 images of the target class) and the test-time signal equals the training one.

    Args:
        delta: amplitude in [0, 1] units (BackdoorBench: 40 / 255).
        frequency: periods across the image width (BackdoorBench: 6).

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """

    delta: float = 40 / 255
    frequency: float = 6.0

    clean_label: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if not 0 < self.delta <= 1:
            raise TacreconError(f"delta must be in (0, 1], got {self.delta}")

    def apply(self, x: Tensor) -> Tensor:
        w = x.shape[-1]
        cols = torch.arange(w, device=x.device, dtype=x.dtype)
        return x + self.delta * torch.sin(2 * math.pi * cols * self.frequency / w)
