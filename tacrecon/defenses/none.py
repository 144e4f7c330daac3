"""The no-defense entry, so every table has its baseline column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, Defense


@DEFENSES.register("none")
@dataclass
class NoDefense(Defense):
    """No defense: returns the model unchanged."""

    paper: ClassVar[str] = "no defense (the backdoored model as trained)"
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "smoke": {}}

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        return None
