"""FT: plain fine-tuning of every weight on the defender's clean set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES
from tacrecon.defenses.finetune import FinetuneDefense


@DEFENSES.register("ft")
@dataclass
class FT(FinetuneDefense):
    """Fine-tuning: cross-entropy on the clean set, all weights trainable.

    The published recipe (BackdoorBench ``config/defense/ft``, the defaults): 100 epochs, batch
    256, SGD lr 0.01 momentum 0.9, weight decay 5e-4, cosine schedule, crop augmentation.
    CPU budget: 20 epochs (2,500 CIFAR-10 images: 50,000 samples, about 40 s for resnet_small on
    2 cores); the loss has flattened by then at lr 0.01.
    """

    paper: ClassVar[str] = "the standard fine-tuning baseline (as in BackdoorBench, Wu et al. 2022, arXiv 2206.12654)"
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {"epochs": 20}, "smoke": {"epochs": 1}}

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        self.stats_["losses"] = self.finetune(model, clean, generator)
