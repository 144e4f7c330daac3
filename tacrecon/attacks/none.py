"""The no-attack entry: trains the clean reference model with the same recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.data.split import Split


@ATTACKS.register("none")
@dataclass
class NoAttack(Attack):
    """No backdoor: ``apply`` is the identity and nothing is poisoned (clean reference model)."""

    def apply(self, x: Tensor) -> Tensor:
        return x.clone()

    def poison(self, train: Split, generator: torch.Generator) -> tuple[Split, Tensor]:
        return train, torch.empty(0, dtype=torch.long, device=train.device)
