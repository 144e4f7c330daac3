"""Adap-Blend: a blend trigger cut into pieces, half of them per training image, plus cover samples."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS
from tacrecon.attacks.blended import load_image, smooth_pattern
from tacrecon.attacks.covers import CoverAttack
from tacrecon.attacks.stamps import blend
from tacrecon.errors import TacreconError


@ATTACKS.register("adap_blend")
@dataclass
class AdapBlend(CoverAttack):
    """Adap-Blend (Qi et al. 2023, "Revisiting the Assumption of Latent Separability for
    Backdoor Defenses", ICLR, https://openreview.net/forum?id=_wSHsgrVali), as in the authors'
    backdoor-toolbox (``poison_tool_box/adaptive_blend.py``, ``create_poisoned_set.py``).

    The pattern is cut into a ``sqrt(pieces)`` x ``sqrt(pieces)`` grid. Each poisoned and each
    cover training image is blended, at ``alpha``, with the pattern masked to a fresh random
    half of the pieces (``round(mask_rate * pieces)`` of them are dropped); poisoned images get
    the attack's label, cover images keep theirs. At test time the whole pattern is blended at
    ``test_alpha``: no training image carried it (the paper's argument for why the poisoned
    samples stay close to the clean ones in latent space). Defaults are the toolbox's CIFAR-10 command (README):
    ``-poison_rate 0.003 -cover_rate 0.003 -alpha 0.15 -test_alpha 0.2``, 16 pieces, mask rate 0.5.

    Differences from backdoor-toolbox:

    * Its pattern is the Hello-Kitty image (``triggers/hellokitty_32.png``), which we do not ship;
      we blend the image file given as ``image``, else Blended's multi-scale noise pattern drawn
      from ``pattern_seed``.
    * Poisoned samples are drawn among the samples whose label changes, as for every attack here
      (the toolbox draws them among all samples, so ~10% of its CIFAR-10 poisoned samples are of
      the target class and keep their label); cover samples, like the toolbox's, among all the
      samples not poisoned, target class included.
    * The toolbox needs the image side to be a multiple of ``sqrt(pieces)``; we split any side
      at ``floor(i * H / sqrt(pieces))``, which is its grid whenever it divides.
    * Masks are drawn from the run's ``torch.Generator``, not Python's ``random``; counts are
      ``round(rate * N)`` where the toolbox truncates.
    * The model is trained with the shared recipe of the protocol, not the toolbox's.

    Args:
        alpha: training blend weight of the kept pieces, in (0, 1].
        test_alpha: test-time blend weight of the whole pattern, in (0, 1].
        pieces: number of pieces of the pattern, a square number.
        mask_rate: fraction of the pieces dropped from each training image, in [0, 1).
        image: optional path of the pattern image (any format Pillow reads).
        pattern_seed: seed of the generated pattern when no image is given.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = AdapBlend(target=0)
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
    """

    rate: float = 0.003
    cover_rate: float = 0.003
    alpha: float = 0.15
    test_alpha: float = 0.2
    pieces: int = 16
    mask_rate: float = 0.5
    image: str = ""
    pattern_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not (0 < self.alpha <= 1 and 0 < self.test_alpha <= 1):
            raise TacreconError(f"alpha and test_alpha must be in (0, 1], got {self.alpha}, {self.test_alpha}")
        if self.pieces < 1 or math.isqrt(self.pieces) ** 2 != self.pieces:
            raise TacreconError(f"pieces must be a square number >= 1, got {self.pieces}")
        if not 0 <= self.mask_rate < 1:
            raise TacreconError(f"mask_rate must be in [0, 1), got {self.mask_rate}")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        c, h, w = self.input_shape_
        side = math.isqrt(self.pieces)
        if side > min(h, w):
            raise TacreconError(f"{self.pieces} pieces do not fit a {h}x{w} image")
        self.pattern_ = load_image(self.image, c, h, w) if self.image else smooth_pattern(c, h, w, self.pattern_seed)
        rows, cols = (torch.arange(h) * side) // h, (torch.arange(w) * side) // w
        self.piece_of_ = rows[:, None] * side + cols[None, :]  # (H, W): the piece of each pixel

    def piece_masks(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` masks (n, 1, H, W) in {0, 1}, each keeping a fresh random subset of the pieces."""
        dropped = round(self.mask_rate * self.pieces)
        order = torch.rand(n, self.pieces, generator=generator).argsort(dim=1)
        keep = torch.ones(n, self.pieces).scatter_(1, order[:, :dropped], 0.0)
        return keep[:, self.piece_of_][:, None]

    def train_trigger(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return blend(x, self.pattern_.to(x), self.piece_masks(x.shape[0], generator).to(x), self.alpha)

    def apply(self, x: Tensor) -> Tensor:
        return blend(x, self.pattern_.to(x), 1.0, self.test_alpha)

    def state_dict(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern_}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.pattern_ = state["pattern"]
