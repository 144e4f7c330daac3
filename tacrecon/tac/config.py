"""TAC's hyperparameters, in one small dataclass per part of the method.

The estimator (:class:`tacrecon.defenses.tac.TAC`) holds one of each; every field also has a
flat name (``threshold``, ``prune_stop``, ``stand_in_eps``, ...) that ``--set key=value``, the
bench configs and the JSON records use (:data:`FLAT`). Why each default has its value is in
docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from tacrecon.config import Config
from tacrecon.errors import TacreconError


@dataclass
class DetectionConfig(Config):
    """The plain look: the QP over every clean sample and the test on its per-class scores.

    Args:
        score: what the test reads: ``norm`` (||s_k||, the paper's) or ``ratio`` (||s_k|| over the
            mean per-sample distance, :func:`~tacrecon.tac.scan.universality_ratios`).
        bias: include the head's bias in the QP constraints.
        quantile: 1.0 asks every clean sample to reach the class (the paper's form); q < 1 the
            q-quantile of the margins.
        rule: ``mad`` (anomaly index > ``threshold``), ``pvalue`` (the smallest score, if its
            p-value < ``alpha``) or ``both``.
        max_relative: a flagged class must also lie below this share of the median score.
        high_relative: > 1 makes the MAD rule two-sided: a class with index < -``threshold`` and
            a score above this share of the median is flagged too (the high side: a class that
            clean images reach only at an unusual cost, as a clean-label attack leaves it); 0: off.
    """

    score: str = "norm"
    bias: bool = True
    quantile: float = 1.0
    rule: str = "mad"
    threshold: float = 3.0
    alpha: float = 0.05
    max_relative: float = 0.85
    high_relative: float = 1.25

    def validate(self) -> None:
        if not 0 < self.quantile <= 1:
            raise TacreconError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.score not in ("norm", "ratio"):
            raise TacreconError(f"score must be norm or ratio, got {self.score!r}")
        if self.rule not in ("mad", "pvalue", "both"):
            raise TacreconError(f"rule must be mad, pvalue or both, got {self.rule!r}")
        if not 0 < self.max_relative <= 1:
            raise TacreconError(f"max_relative must be in (0, 1], got {self.max_relative}")
        if self.high_relative != 0 and self.high_relative <= 1:
            raise TacreconError(f"high_relative must be 0 (off) or > 1, got {self.high_relative}")

    @property
    def qp_quantile(self) -> float | None:
        """The quantile for the QP: None (the max over samples) when ``quantile`` is 1."""
        return None if self.quantile >= 1 else self.quantile


@dataclass
class RobustLookConfig(Config):
    """The robust look (ours): the QP asks only ``quantile`` of the clean samples to reach each
    class; a class whose robust norm has anomaly index > ``threshold`` and lies below
    ``max_relative`` x the median robust norm is flagged too. ``quantile`` 0: off."""

    quantile: float = 0.95
    threshold: float = 2.0
    max_relative: float = 0.85

    def validate(self) -> None:
        if not 0 <= self.quantile < 1 or self.threshold <= 0 or not 0 < self.max_relative <= 1:
            raise TacreconError(f"need robust_quantile in [0, 1), robust_threshold > 0 and robust_max_relative in "
                                f"(0, 1], got {self.quantile}, {self.threshold}, {self.max_relative}")


@dataclass
class PriorConfig(Config):
    """The class-count correction (ours): each look's scores are divided by a power law of the
    clean set's class counts before the test. ``mode``: ``auto`` (on when the counts span at
    least ``ratio`` and a chi-square test rejects equal class probabilities at ``alpha``),
    ``counts`` (always) or ``off``."""

    mode: str = "auto"
    ratio: float = 2.0
    alpha: float = 1e-3

    def validate(self) -> None:
        if self.mode not in ("auto", "counts", "off") or not self.ratio >= 1 or not 0 < self.alpha <= 1:
            raise TacreconError(f"need prior in auto, counts, off, prior_ratio >= 1 and prior_alpha in (0, 1], got "
                                f"{self.mode!r}, {self.ratio}, {self.alpha}")


@dataclass
class PruneConfig(Config):
    """The pruning of the TAC's latent units (``method`` prune).

    Args:
        stop: prune until every low-side target's norm is this share of the median norm.
        step: units removed per step (0: d / 128).
        max: at most this share of the d units.
        rank: which units go first: ``shift`` (largest |s_t| component) or ``shift_std``
            (largest |s_t| over the unit's clean standard deviation).
        peak_max_drop: a high-side class is pruned to the peak of its norm, stopping before the
            clean accuracy of the pruned head falls by more than this.
        low: prune the low-side targets too (and those of the robust look; the default until
            revision 7); False: only the high-side ones (a clean-label trigger's units), the
            low-side ones are left to the fine-tune, its stand-ins and the TAC loss (pruning
            there costs accuracy on models of other recipes: docs/method.md).
    """

    stop: float = 1.2
    step: int = 0
    max: float = 0.5
    rank: str = "shift"
    peak_max_drop: float = 0.01
    low: bool = False

    def validate(self) -> None:
        if self.stop <= 0 or self.step < 0 or not 0 < self.max <= 1:
            raise TacreconError(f"need prune_stop > 0, prune_step >= 0 and prune_max in (0, 1], got "
                                f"{self.stop}, {self.step}, {self.max}")
        if not 0 <= self.peak_max_drop <= 1:
            raise TacreconError(f"peak_max_drop must be in [0, 1], got {self.peak_max_drop}")
        if self.rank not in ("shift", "shift_std"):
            raise TacreconError(f"prune_rank must be shift or shift_std, got {self.rank!r}")


@dataclass
class StandInConfig(Config):
    """The stand-in trigger (ours): per low-side target, the universal input perturbation of
    L-inf radius ``eps`` whose latent change reproduces s_t (``steps`` Adam steps at ``lr``);
    the fine-tune adds it to ``share`` of every batch with the true labels kept. ``eps`` 0: off.
    ``chase`` > 0: before stamping, the stand-in takes that many signed-gradient steps of
    ``chase_step`` towards its target on the batch (:func:`~tacrecon.tac.stand_in.chase_stand_ins`),
    so that it follows the model through the fine-tune (off: it costs accuracy). ``patch`` > 0:
    each target also gets a patch stand-in, the most effective patch of that many pixels towards
    it (:func:`~tacrecon.tac.residual.search_patch`, ``patch_steps`` Adam steps at ``patch_lr``),
    stamped on the next ``share`` of every batch, labels kept (Neural Cleanse's unlearning with a
    pixel budget instead of a minimized mask); 25 pixels since revision 7 (docs/method.md)."""

    eps: float = 0.1
    share: float = 0.2
    steps: int = 150
    lr: float = 0.05
    chase: int = 0
    chase_step: float = 0.01
    patch: int = 25
    patch_steps: int = 60
    patch_lr: float = 0.3

    def validate(self) -> None:
        if not 0 <= self.eps <= 1 or not 0 < self.share < 1:
            raise TacreconError(f"need stand_in_eps in [0, 1] and stand_in_share in (0, 1), got "
                                f"{self.eps}, {self.share}")
        if self.steps < 1 or self.lr <= 0:
            raise TacreconError(f"need stand_in_steps >= 1 and stand_in_lr > 0, got {self.steps}, {self.lr}")
        if self.patch < 0 or self.patch_steps < 1 or self.patch_lr <= 0 or (self.patch and self.share > 0.5):
            raise TacreconError(f"need stand_in_patch >= 0, stand_in_patch_steps >= 1, stand_in_patch_lr > 0 and, "
                                f"with patches, stand_in_share <= 0.5; got {self.patch}, {self.patch_steps}, "
                                f"{self.patch_lr}, {self.share}")
        if self.chase < 0 or self.chase_step <= 0:
            raise TacreconError(f"need stand_in_chase >= 0 and stand_in_chase_step > 0, got {self.chase}, "
                                f"{self.chase_step}")


@dataclass
class SelfCheckConfig(Config):
    """The repair's check of its own work (:mod:`tacrecon.tac.residual`) and what it may spend.

    Args:
        rounds: repair rounds at most; after each, the residual is estimated and another round
            with the TAC loss at beta >= 1 runs while the backdoor looks present and the held-out
            accuracy has not dropped by more than ``budget`` (a later round that drops it further
            is undone). 0 (the default):
            one round, no held-out part, no estimate (docs/benchmarks.md: how far the estimate
            can be trusted so far).
        held_out: share of the clean set kept out of the repair, to measure its accuracy cost.
        budget: the accuracy drop on the held-out images that ends the rounds.
        next: what a later round does: ``restart`` (from the model as it was before the repair,
            with the TAC loss), ``continue`` (on the current model, scanned again, with the TAC
            loss), ``prune`` (from the model as it was, with the low-side targets' units pruned
            first: for a repair whose first round leaves them unpruned, ``prune_low`` false) or
            ``gentle`` (one more round only when the first drops the held-out accuracy past the
            budget: from the model as it was, low-side units unpruned, with distillation).
        margin: the residual score (target's patch success minus the other classes' median)
            above which the backdoor counts as present.
        pixels: the patch's budget in pixels.
        classes: other classes compared with the target (drawn at random above that count).
        steps, lr, batch_size: the patch search (Adam).
    """

    rounds: int = 0
    held_out: float = 0.1
    budget: float = 0.02
    next: str = "restart"
    margin: float = 0.15
    pixels: int = 9
    classes: int = 9
    steps: int = 60
    lr: float = 0.3
    batch_size: int = 64

    def validate(self) -> None:
        if self.rounds < 0 or not 0 <= self.held_out < 0.5 or not 0 <= self.budget <= 1:
            raise TacreconError(f"need check_rounds >= 0, held_out in [0, 0.5) and check_budget in [0, 1], got "
                                f"{self.rounds}, {self.held_out}, {self.budget}")
        if self.next not in ("restart", "continue", "prune", "gentle"):
            raise TacreconError(f"check_next must be restart, continue, prune or gentle, got {self.next!r}")
        if min(self.pixels, self.classes, self.steps, self.batch_size) < 1 or self.lr <= 0:
            raise TacreconError(f"need check_pixels, check_classes, check_steps, check_batch_size >= 1 and check_lr > 0, "
                                f"got {self.pixels}, {self.classes}, {self.steps}, {self.batch_size}, {self.lr}")


GROUPS: dict[str, type[Config]] = {"detection": DetectionConfig, "robust": RobustLookConfig, "prior": PriorConfig,
                                   "pruning": PruneConfig, "stand_in": StandInConfig, "check": SelfCheckConfig}

# flat name -> (group, field): the names of --set, the bench configs and the records
FLAT: dict[str, tuple[str, str]] = {
    **{name: ("detection", name) for name in ("score", "bias", "quantile", "rule", "threshold", "alpha",
                                              "max_relative", "high_relative")},
    **{f"robust_{name}": ("robust", name) for name in ("quantile", "threshold", "max_relative")},
    "prior": ("prior", "mode"), "prior_ratio": ("prior", "ratio"), "prior_alpha": ("prior", "alpha"),
    **{f"prune_{name}": ("pruning", name) for name in ("stop", "step", "max", "rank", "low")},
    "peak_max_drop": ("pruning", "peak_max_drop"),
    **{f"stand_in_{name}": ("stand_in", name) for name in ("eps", "share", "steps", "lr", "chase",
                                                                                "chase_step", "patch", "patch_steps",
                                                                                "patch_lr")},
    **{f"check_{name}": ("check", name) for name in ("rounds", "budget", "next", "margin", "pixels", "classes", "steps", "lr",
                                                      "batch_size")},
    "held_out": ("check", "held_out"),
}

# the names records of TAC revisions <= 6 used, still read (and accepted by --set)
LEGACY: dict[str, str] = {"surrogate_eps": "stand_in_eps", "surrogate_ratio": "stand_in_share",
                          "surrogate_steps": "stand_in_steps", "surrogate_lr": "stand_in_lr",
                          "second_quantile": "robust_quantile", "second_threshold": "robust_threshold",
                          "second_max_relative": "robust_max_relative"}
