"""Attacks with cover samples: training images that carry a trigger and keep their true label.

Cover ("regularization") samples are how backdoor-toolbox's adaptive and source-specific attacks
(Qi et al., ICLR 2023; Tang et al., USENIX Security 2021) keep the poisoned samples from
standing apart: the trigger alone no longer decides the label, so the model learns a narrower
backdoor whose latent representation sits closer to the clean one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import Attack, check_images
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError


@dataclass
class CoverAttack(Attack):
    """Base of the attacks with cover samples (not registered itself).

    ``training_set`` draws the poisoned samples as every attack does (``rate``, among the
    samples whose label changes), then ``round(cover_rate * N)`` cover samples among the others
    that ``cover_eligible`` allows, stamps both with :meth:`train_trigger` and relabels only the
    poisoned ones. Cover samples are not counted as poisoned (the returned indices are the
    relabelled samples only), like WaNet's noise-mode samples. ``poison`` is inherited: the same
    relabelled samples stamped with the test trigger ``apply`` and no covers, which is what the
    model trains on only when the training trigger is the test one (TaCT).

    Args:
        cover_rate: fraction of the whole training split stamped and left with its label.
    """

    cover_rate: float = 0.0

    def validate(self) -> None:
        super().validate()
        if not 0 <= self.cover_rate < 1 or self.rate + self.cover_rate > 1:
            raise TacreconError(f"cover_rate must be in [0, 1) with rate + cover_rate <= 1, got {self.cover_rate}")

    def cover_eligible(self, y: Tensor) -> Tensor:
        """Boolean mask (N,) of the samples that may be covers (all; subclasses narrow it)."""
        return torch.ones_like(y, dtype=torch.bool)

    def cover_index(self, y: Tensor, poisoned: Tensor, generator: torch.Generator) -> Tensor:
        """Sorted indices of ``round(cover_rate * N)`` cover samples, none of them in ``poisoned``."""
        allowed = self.cover_eligible(y).cpu()
        allowed[poisoned.cpu()] = False
        candidates = torch.nonzero(allowed).flatten()
        n = round(self.cover_rate * y.shape[0])
        if n > candidates.numel():
            raise TacreconError(f"cover_rate {self.cover_rate} asks for {n} samples but only "
                                f"{candidates.numel()} may be covers")
        pick = torch.randperm(candidates.numel(), generator=generator)[:n]
        return candidates[pick].sort().values

    def train_trigger(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The trigger stamped on training images (N, C, H, W) in [0, 1]; default the test one."""
        return self.apply(x)

    def stamp_train(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """:meth:`train_trigger` checked, without gradients and clamped to [0, 1]."""
        check_images(x)
        with torch.no_grad():
            return self.train_trigger(x, generator).clamp_(0, 1)

    def training_set(self, train: Split, generator: torch.Generator) -> tuple[Split, Tensor]:
        """The training split with poisoned and cover samples; returns it and the poisoned indices (K,)."""
        idx = self.poison_index(train.y, generator).to(train.device)
        cover = self.cover_index(train.y, idx, generator).to(train.device)
        x, y = train.x.clone(), train.y.clone()
        x[idx] = self.stamp_train(x[idx], generator)
        x[cover] = self.stamp_train(x[cover], generator)
        y[idx] = self.label_map()(y[idx])
        return Split(x, y), idx
