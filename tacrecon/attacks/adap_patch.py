"""Adap-Patch: several weak patch triggers in training, a different, full-strength set at test time."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS
from tacrecon.attacks.covers import CoverAttack
from tacrecon.attacks.stamps import STAMPS, blend, stamp
from tacrecon.errors import TacreconError


@ATTACKS.register("adap_patch")
@dataclass
class AdapPatch(CoverAttack):
    """Adap-Patch (Qi et al. 2023, "Revisiting the Assumption of Latent Separability for
    Backdoor Defenses", ICLR, https://openreview.net/forum?id=_wSHsgrVali), as in the authors'
    backdoor-toolbox (``poison_tool_box/adaptive_patch.py``, ``config.py``).

    In training, the poisoned samples (in index order) are cut into ``len(train_triggers)``
    equal runs and run j is stamped with trigger j alone, semi-transparent (``train_alphas``);
    the cover samples likewise, keeping their labels. At test time every trigger of
    ``test_triggers`` is stamped in turn at its ``test_alphas`` (1 = pasted): a combination no
    training image showed. Defaults are the toolbox's CIFAR-10 settings: training triggers
    phoenix_corner 0.5, firefox_corner 0.2, badnet_patch4 0.5, trojan_square 0.3; test triggers
    phoenix_corner2 and badnet_patch4 at 1; ``-poison_rate 0.003 -cover_rate 0.006`` (README).
    Its GTSRB settings differ only in the test triggers (firefox_corner and trojan_square at 1)
    and the rates (0.005 / 0.01); pass them as hyperparameters.

    Differences from backdoor-toolbox:

    * Its triggers are PNG logos we do not ship; each stamp (``tacrecon.attacks.stamps``) keeps
      the file's place, size and mask and draws the logo's colours from ``pattern_seed``
      (firefox's mask is a disc of 137 pixels for the file's 140); badnet_patch4 is exact.
    * Poisoned samples are drawn among the samples whose label changes, as for every attack here
      (the toolbox draws them among all samples); cover samples among all the others.
    * Counts are ``round(rate * N)`` where the toolbox truncates; the draw uses the run's
      ``torch.Generator``. The model is trained with the shared recipe of the protocol.

    Args:
        train_triggers: stamp names used in training, one run of samples each.
        train_alphas: their blend weights, in (0, 1].
        test_triggers: stamp names applied together at test time.
        test_alphas: their blend weights, in (0, 1].
        pattern_seed: seed of the logos' colours.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = AdapPatch(target=0)
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
    """

    rate: float = 0.003
    cover_rate: float = 0.006
    train_triggers: tuple[str, ...] = ("phoenix_corner", "firefox_corner", "badnet_patch4", "trojan_square")
    train_alphas: tuple[float, ...] = (0.5, 0.2, 0.5, 0.3)
    test_triggers: tuple[str, ...] = ("phoenix_corner2", "badnet_patch4")
    test_alphas: tuple[float, ...] = (1.0, 1.0)
    pattern_seed: int = 0

    def validate(self) -> None:
        super().validate()
        for names, alphas, when in ((self.train_triggers, self.train_alphas, "train"),
                                    (self.test_triggers, self.test_alphas, "test")):
            if not names or len(names) != len(alphas):
                raise TacreconError(f"need one {when} alpha per {when} trigger and at least one, "
                                    f"got {len(names)} triggers and {len(alphas)} alphas")
            unknown = [n for n in names if n not in STAMPS]
            if unknown:
                raise TacreconError(f"unknown {when} trigger(s) {', '.join(unknown)}; known: {', '.join(STAMPS)}")
            if not all(0 < a <= 1 for a in alphas):
                raise TacreconError(f"{when} alphas must be in (0, 1], got {list(alphas)}")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        self.train_marks_, self.train_masks_ = self._stamps(self.train_triggers)
        self.test_marks_, self.test_masks_ = self._stamps(self.test_triggers)

    def _stamps(self, names: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        """Marks (K, C, H, W) and masks (K, 1, H, W) of the stamps ``names``."""
        c, h, w = self.input_shape_
        made = [stamp(n, c, h, w, self.pattern_seed) for n in names]
        return torch.stack([m for m, _ in made]), torch.stack([k for _, k in made])

    def train_trigger(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Sample i of n gets training trigger ``i * K // n`` (K triggers): K runs in index order."""
        k = len(self.train_triggers)
        which = torch.arange(x.shape[0]) * k // max(x.shape[0], 1)
        alphas = torch.tensor(self.train_alphas)[which].view(-1, 1, 1, 1)
        return blend(x, self.train_marks_[which].to(x), self.train_masks_[which].to(x), alphas.to(x))

    def apply(self, x: Tensor) -> Tensor:
        for mark, mask, alpha in zip(self.test_marks_, self.test_masks_, self.test_alphas):
            x = blend(x, mark.to(x), mask.to(x), alpha)
        return x
