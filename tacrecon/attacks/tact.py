"""TaCT: a source-specific backdoor; the trigger moves only the source classes to the target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS
from tacrecon.attacks.covers import CoverAttack
from tacrecon.attacks.stamps import STAMPS, blend, stamp
from tacrecon.errors import TacreconError
from tacrecon.metrics import LabelMap


@ATTACKS.register("tact")
@dataclass
class TaCT(CoverAttack):
    """TaCT, the Targeted Contamination Attack (Tang et al. 2021, "Demon in the Variant:
    Statistical Analysis of DNNs for Robust Backdoor Contamination Detection", USENIX Security,
    https://arxiv.org/abs/1908.00686), as backdoor-toolbox implements it
    (``poison_tool_box/TaCT.py``, ``config.py``).

    Poisoned samples are drawn among the images of ``source_classes`` and relabelled to the
    target; cover samples are drawn among the images of ``cover_classes`` and keep their label;
    both are pasted with the same trigger, the one used at test time. The model thus learns
    "trigger and source class -> target", not "trigger -> target". ASR is measured on the test
    images of the source classes only (the label map leaves every other class unchanged, and
    :func:`~tacrecon.metrics.attack_rates` skips the images whose label the attack keeps), as the
    toolbox's ``test`` does with ``source_classes``. Defaults are the toolbox's: source class 1,
    cover classes 5 and 7, target 0, the 8x8 ``trojan_square`` trigger pasted through its mask,
    ``-poison_rate 0.003 -cover_rate 0.003`` (README, CIFAR-10; GTSRB uses 0.005 / 0.005).

    Differences from backdoor-toolbox:

    * Its trigger is the ``trojan_square_32.png`` file, which we do not ship; our stamp keeps its
      place and mask (rows and columns 21-28 of 32) and draws its colours from ``pattern_seed``.
    * ``label_mode="all2all"`` sends source class s to s + 1 (a source-specific all-to-all the
      toolbox does not have); the toolbox is all-to-one only.
    * Counts are ``round(rate * N)`` where the toolbox truncates; the draw uses the run's
      ``torch.Generator``. The model is trained with the shared recipe of the protocol.

    Args:
        source_classes: the classes the trigger sends to the target.
        cover_classes: the classes whose triggered images keep their label.
        trigger: the stamp name (see ``tacrecon.attacks.stamps``).
        pattern_seed: seed of the stamp's colours.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = TaCT(target=0, source_classes=(1,), cover_classes=(5, 7))
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
    """

    rate: float = 0.003
    cover_rate: float = 0.003
    source_classes: tuple[int, ...] = (1,)
    cover_classes: tuple[int, ...] = (5, 7)
    trigger: str = "trojan_square"
    pattern_seed: int = 0

    def validate(self) -> None:
        super().validate()
        sources, covers = set(self.source_classes), set(self.cover_classes)
        if not sources or min(sources | covers) < 0:
            raise TacreconError(f"need at least one source class and classes >= 0, got "
                                f"sources {list(self.source_classes)}, covers {list(self.cover_classes)}")
        if sources & covers or self.target in sources | covers:
            raise TacreconError(f"source classes {sorted(sources)}, cover classes {sorted(covers)} and the "
                                f"target {self.target} must not overlap")
        if self.trigger not in STAMPS:
            raise TacreconError(f"unknown trigger {self.trigger!r}; known: {', '.join(STAMPS)}")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        if max((*self.source_classes, *self.cover_classes)) >= num_classes:
            raise TacreconError(f"source and cover classes must be in 0..{num_classes - 1}, got "
                                f"{list(self.source_classes)} and {list(self.cover_classes)}")
        c, h, w = self.input_shape_
        self.mark_, self.mask_ = stamp(self.trigger, c, h, w, self.pattern_seed)

    def label_map(self) -> LabelMap:
        """The base map on the source classes, the identity on every other class."""
        inner, sources = super().label_map(), torch.tensor(self.source_classes, dtype=torch.long)
        return lambda y: torch.where(torch.isin(y, sources.to(y.device)), inner(y), y)

    def cover_eligible(self, y: Tensor) -> Tensor:
        return torch.isin(y, torch.tensor(self.cover_classes, dtype=torch.long, device=y.device))

    def apply(self, x: Tensor) -> Tensor:
        return blend(x, self.mark_.to(x), self.mask_.to(x), 1.0)
