"""TAC-aware: an all-to-one backdoor trained with a term that hides its target from TAC's scan."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.attacks.base import ATTACKS, Attack, plain_attack
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import LabelMap
from tacrecon.qp import norm_at_active_set, solve_latent_qp
from tacrecon.train import LossFn, TrainConfig, fit


def hiding_term(latents: Tensor, head: nn.Linear, target: int, quantile: float | None, ratio: float,
                band: float = 0.0) -> Tensor:
    """How far the target's latent QP norm lies from ``ratio`` x the other classes' median, in
    log units, on either side (the scan flags a class far below the median, and one far above it
    too), less ``log(1 + band)`` (0 inside the band), differentiable in ``latents`` (n, d) and
    ``head``.

    The QP is solved exactly on the batch (the scan's own solver, float64, no gradient); the
    target's norm is then rebuilt at the solution's active set
    (:func:`~tacrecon.qp.norm_at_active_set`), so the gradient is the norm's own. The median is a
    constant of the step: the term moves the target, not the other classes.
    """
    bias = head.bias
    solved = solve_latent_qp(latents.detach(), head.weight.detach(), None if bias is None else bias.detach(),
                             quantile=quantile)
    others = torch.cat([solved.norms[:target], solved.norms[target + 1:]])
    others = others[torch.isfinite(others)]
    if not bool(torch.isfinite(solved.norms[target])) or others.numel() == 0:
        return latents.new_zeros(())
    median = float(others.median())
    norm = norm_at_active_set(latents.double(), head.weight.double(), None if bias is None else bias.double(),
                              target, solved.active[target], quantile)
    # a norm of 0 (the class already holds every sample) counts as a millionth of the median
    off = (norm.clamp_min(1e-6 * median).log() - math.log(ratio * median)).abs()
    return (off - math.log1p(band)).clamp_min(0).to(latents.dtype)


@ATTACKS.register("tac_aware")
@dataclass
class TacAware(Attack):
    """A backdoor whose training also keeps its target's latent QP norm near the other classes'.

    Our own adaptive attack against TAC (no paper): the attacker knows the scan, which flags a
    class whose minimal universal latent shift (the latent QP's ||s_t||, over every clean sample)
    is unusually small against the other classes' (or, by its high-side rule, unusually large),
    and trains the backdoored model with

        loss = CE + weight * sum over looks of max(0, | log ||s_t|| - log(ratio * median_k ||s_k||) | - log(1 + band))

    on every batch: the QP is solved exactly on the latents of the batch's rows not labelled
    with the target (clean images of the other classes: all-to-one poisoned rows carry the
    target's label), its target norm rebuilt differentiably at the active set. The looks are the
    scan's two: the plain one (``quantiles`` 1.0: the max over samples) and the robust one (0.95:
    the lower quantile). A batch's QP is a proxy of the scan's, which uses the defender's clean
    set in eval mode; how far it carries is measured in docs/benchmarks.md.

    The backdoor itself is any registered all-to-one attack trained on its poisoned samples alone
    (BadNets, Blended, SIG, Trojan, ...), given as ``attack``; its trigger, poisoning and ASR are
    its own.

    Args:
        attack: the backdoor, ``{"name": <attack>, <its hyperparameters>}`` without target, rate
            or label mode (this attack's own are used). Default: BadNets.
        weight: weight of the hiding term (0: the plain backdoor).
        ratio: where the term puts the target's norm, as a share of the median (1: at it).
        band: no term while the norm is within this relative distance of that point (the scan
            needs a clear outlier; without a band, the term pulls on every step and cost a
            CIFAR-10 model 22 points of accuracy at weight 1).
        quantiles: the looks hidden from: 1.0 the plain look, q < 1 a robust look at quantile q.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1] (the backdoor's trigger).

    Example:
        >>> attack = create_attack("tac_aware", attack={"name": "blended"}, weight=1.0, target=3)
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
    """

    attack: dict = field(default_factory=lambda: {"name": "badnets"})
    weight: float = 1.0
    ratio: float = 1.0
    band: float = 0.1
    quantiles: list = field(default_factory=lambda: [1.0, 0.95])

    composite: ClassVar[bool] = True
    revision: ClassVar[int] = 2  # 2: the band

    def validate(self) -> None:
        if self.label_mode != "all2one":
            raise TacreconError("tac_aware hides one target: label_mode must be all2one")
        if self.weight < 0 or self.ratio <= 0 or self.band < 0:
            raise TacreconError(f"tac_aware: need weight >= 0, ratio > 0 and band >= 0, got {self.weight}, {self.ratio}, "
                                f"{self.band}")
        if not isinstance(self.quantiles, list) or not self.quantiles or \
                not all(isinstance(q, (int, float)) and 0 < q <= 1 for q in self.quantiles):
            raise TacreconError(f"tac_aware: quantiles must list values in (0, 1], got {self.quantiles!r}")
        self.base_ = plain_attack(self.attack, "tac_aware: attack", {"target": self.target, "rate": self.rate}, {})
        super().validate()

    @property
    def clean_label(self) -> bool:  # type: ignore[override]
        return self.base_.clean_label

    # --- trigger and poisoning: the backdoor's own ---------------------------------------------

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        super().bind(data.num_classes, data.input_shape)
        self.base_.setup(data, generator)

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        self.base_.bind(num_classes, input_shape)

    def apply(self, x: Tensor) -> Tensor:
        return self.base_.apply(x)

    def label_map(self) -> LabelMap:
        return self.base_.label_map()

    def eligible(self, y: Tensor) -> Tensor:
        return self.base_.eligible(y)

    def mark(self, x: Tensor, y: Tensor, idx: Tensor) -> None:
        self.base_.mark(x, y, idx)

    # --- training ------------------------------------------------------------------------------

    def loss(self, cfg: TrainConfig) -> LossFn:
        """``(model, x, y) -> scalar``: label-smoothed CE plus the hiding term of each look."""
        looks = [None if q >= 1 else float(q) for q in self.quantiles]

        def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            z = model.latent(x)
            head = model.get_classifier()
            out = F.cross_entropy(head(z), y, label_smoothing=cfg.label_smoothing)
            clean = y != self.target
            if self.weight == 0 or int(clean.sum()) < 2:
                return out
            hidden = sum(hiding_term(z[clean], head, self.target, q, self.ratio, self.band) for q in looks)
            return out + self.weight * hidden

        return loss_fn

    def train(self, model: nn.Module, train: Split, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
        """Train ``model`` (a classifier with ``latent`` and ``get_classifier``) in place on the
        poisoned split, with the hiding term; returns the poisoned indices."""
        if not callable(getattr(model, "latent", None)) or not callable(getattr(model, "get_classifier", None)):
            raise TacreconError("tac_aware trains a classifier with latent() and get_classifier() (tacrecon.models)")
        poisoned, idx = self.training_set(train, generator)
        fit(model, poisoned, cfg, generator=generator, loss_fn=self.loss(cfg), desc=f"train {self.name}")
        return idx

    # --- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        return self.base_.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_.load_state_dict(state)
