"""TAC's scan: the latent QP of every class (both looks), the test on its norms, the class-count prior.

The scan reads the model's head and the clean latents only: about one forward pass over the
clean set, then one small convex QP per class (:mod:`tacrecon.qp`). docs/method.md says why
each look and bound is there and how the defaults were chosen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.models import Classifier, latents_of
from tacrecon.qp import QPResult, sample_distances, solve_latent_qp
from tacrecon.stats import anomaly_index, corrected, count_prior, imbalance_pvalue, min_test_pvalue, relative_scores
from tacrecon.tac.config import DetectionConfig, PriorConfig, RobustLookConfig

if TYPE_CHECKING:  # pairwise imports this module
    from tacrecon.tac.pairwise import PairwiseResult


def head_of(model: Classifier, bias: bool = True) -> tuple[Tensor, Tensor | None]:
    """The head's weight (C, d) and bias (C,) (None: no bias, or ``bias`` False), detached."""
    head = model.get_classifier()
    return head.weight.detach(), head.bias.detach() if bias and head.bias is not None else None


def reconstruct(model: Classifier, latents: Tensor, bias: bool = True, quantile: float | None = None) -> QPResult:
    """The minimal latent shift s_k (d,) of every class k from the clean ``latents`` (N, d)."""
    weight, b = head_of(model, bias)
    return solve_latent_qp(latents, weight, b, quantile=quantile)


def universality_ratios(model: Classifier, latents: Tensor, labels: Tensor, qp: QPResult, bias: bool = True) -> Tensor:
    """||s_k|| / (mean distance of a clean sample of another class to class k on its own): (C,).

    A class that is merely easy to reach (close to every sample) has both a small universal
    shift and small per-sample distances; a backdoor target is reachable by *one* shift almost
    as cheaply as each sample on its own. The ratio keeps the second and cancels the first.
    """
    dist = sample_distances(latents, *head_of(model, bias)).cpu()
    y = labels.cpu()
    mean = torch.stack([dist[y != k, k].mean() if bool((y != k).any()) else dist[:, k].mean()
                        for k in range(dist.shape[1])])
    return qp.norms / mean.clamp_min(1e-12)


@dataclass
class Detection:
    """The test's verdict on per-class scores (C,): see :func:`detect`.

    ``anomaly_index`` and ``relative`` (score over the median score) are (C,); ``p_value`` is
    the smallest score's; ``flagged`` the flagged classes, most anomalous first, the high side
    last; ``high_side`` those flagged for an unusually *large* score.
    """

    anomaly_index: Tensor
    relative: Tensor
    p_value: float
    flagged: list[int]
    high_side: list[int]


def detect(scores: Tensor, cfg: DetectionConfig | None = None) -> Detection:
    """Flag the classes whose score (C,) is unusually small (or, with ``high_relative``, large).

    Under ``cfg.rule`` a class is flagged by the MAD rule (anomaly index > ``threshold``), the
    p-value of the smallest score (< ``alpha``) or either, and only if its score is also below
    ``max_relative`` x the median. With ``high_relative`` > 1 a class with anomaly index <
    -``threshold`` and a score above ``high_relative`` x the median is flagged too, after the
    others: a class that clean images reach only at an unusual cost, the mark of a clean-label
    attack that poisons the whole target class (SIG: its clean target images were never learned
    without the trigger).
    """
    cfg = cfg or DetectionConfig()
    index, relative, p_value = anomaly_index(scores), relative_scores(scores), min_test_pvalue(scores)
    by_mad = [int(k) for k in torch.argsort(index, descending=True) if index[k] > cfg.threshold]
    by_p = [int(torch.argmin(scores))] if p_value < cfg.alpha else []
    flagged = {"mad": by_mad, "pvalue": by_p, "both": by_mad + [k for k in by_p if k not in by_mad]}[cfg.rule]
    flagged = [k for k in flagged if relative[k] < cfg.max_relative]
    high: list[int] = []
    if cfg.high_relative > 1 and cfg.rule != "pvalue":
        finite = torch.isfinite(scores)
        high = [int(k) for k in torch.argsort(index) if finite[k] and index[k] < -cfg.threshold
                and relative[k] > cfg.high_relative]
    return Detection(index, relative, p_value, flagged + high, high)


def class_prior(scores: Tensor, labels: Tensor, num_classes: int, cfg: PriorConfig | None = None) -> Tensor | None:
    """The class-count prior (C,) that ``scores`` (C,) are divided by before the test, from the
    clean ``labels`` (N,); None where ``cfg.mode`` leaves the correction off."""
    cfg = cfg or PriorConfig()
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    present = counts[counts > 0]
    spread = int(present.max()) >= cfg.ratio * int(present.min())
    if cfg.mode == "off" or (cfg.mode == "auto" and not (spread and imbalance_pvalue(counts) < cfg.alpha)):
        return None
    return count_prior(scores, counts)


@dataclass
class Look:
    """One look at the model: its QP (one s_k per class), the class-count prior its scores were
    divided by (C,; None: off) and the test's :class:`Detection`."""

    qp: QPResult
    prior: Tensor | None
    detection: Detection

    def record(self, prefix: str = "") -> dict[str, Any]:
        """The look as JSON-ready lists, its keys prefixed with ``prefix``."""
        return {f"{prefix}norms": self.qp.norms.tolist(),
                f"{prefix}anomaly_index": self.detection.anomaly_index.tolist(),
                f"{prefix}relative": self.detection.relative.tolist(),
                f"{prefix}prior": None if self.prior is None else self.prior.tolist()}


@dataclass
class ScanResult:
    """What a scan found on one model.

    Attributes:
        plain: the plain look (the QP over every clean sample; its test reads ``ratios`` instead
            of the norms under ``score`` ratio).
        ratios: (C,) the universality ratios, computed only where the test reads them (``score``
            ratio; None otherwise: they cost n C^2 like the offsets, 28 s at 1,000 classes).
        latents: (N, d) the clean latents.
        shifts: (C, d) the TAC s_k of every class: the robust one for a class found only by the
            robust look.
        robust_look: the robust look (None: off).
        robust: the classes only the robust look flagged.
        seconds: the scan's wall time.
        pairwise: the opt-in pairwise look (:mod:`tacrecon.tac.pairwise`; None: not run). Its
            flagged pairs do not enter ``flagged``: the look is not part of the scan's verdict.
    """

    plain: Look
    ratios: Tensor | None
    latents: Tensor
    shifts: Tensor
    robust_look: Look | None = None
    robust: list[int] = field(default_factory=list)
    seconds: float = 0.0
    pairwise: PairwiseResult | None = None

    @property
    def flagged(self) -> list[int]:
        """Every flagged class: the plain test's (most anomalous first), then the robust look's."""
        return self.plain.detection.flagged + self.robust

    @property
    def target(self) -> int | None:
        """The most anomalous flagged class (None: the model looks clean)."""
        return self.flagged[0] if self.flagged else None

    @property
    def backdoored(self) -> bool:
        """Whether any class was flagged."""
        return bool(self.flagged)

    @property
    def norms(self) -> Tensor:
        """(C,) ||s_k||, the plain look's minimal latent shift of every class (inf: unreachable)."""
        return self.plain.qp.norms

    @property
    def relative(self) -> Tensor:
        """(C,) each class's score over the median score (class-count corrected where on)."""
        return self.plain.detection.relative

    @property
    def anomaly_index(self) -> Tensor:
        """(C,) the robust z-score of each class's score; large positive: unusually small."""
        return self.plain.detection.anomaly_index

    @property
    def high_side(self) -> list[int]:
        """The classes flagged for an unusually large norm (clean-label poisoning)."""
        return self.plain.detection.high_side

    def record(self) -> dict[str, Any]:
        """The JSON record of the scan (the ``scores`` of a TAC run's record)."""
        qp = self.plain.qp
        out = {"backdoored": bool(self.flagged), "target": self.target, "targets": self.flagged,
               **self.plain.record(), "ratios": None if self.ratios is None else self.ratios.tolist(),
               "p_value": self.plain.detection.p_value,
               "kkt_residual": float(qp.kkt_residual.nan_to_num(0).max()), "qp_iterations": int(qp.iterations.sum()),
               "high_side": self.high_side, "robust": self.robust, "scan_seconds": self.seconds}
        if self.robust_look is not None:
            out.update(self.robust_look.record("robust_"))
        if self.pairwise is not None:
            out.update(self.pairwise.record())
        return out


def check_labels(model: Classifier, clean: Split) -> None:
    """One error line when the clean labels name a class the model does not have."""
    if int(clean.y.max()) >= model.num_classes:
        raise TacreconError(f"the clean labels reach class {int(clean.y.max())} but the model has "
                            f"{model.num_classes} classes")


def scan(model: Classifier, clean: Split, detection: DetectionConfig | None = None,
         robust: RobustLookConfig | None = None, prior: PriorConfig | None = None) -> ScanResult:
    """Both looks and their tests on ``model`` (not modified) with the ``clean`` split."""
    detection, robust, prior = detection or DetectionConfig(), robust or RobustLookConfig(), prior or PriorConfig()
    check_labels(model, clean)
    start = time.perf_counter()
    z = latents_of(model, clean.x)
    qp = reconstruct(model, z, detection.bias, detection.qp_quantile)
    ratios = None if detection.score == "norm" else universality_ratios(model, z, clean.y, qp, detection.bias)
    scores = qp.norms if ratios is None else ratios
    weight = class_prior(scores, clean.y, model.num_classes, prior)
    result = ScanResult(Look(qp, weight, detect(corrected(scores, weight), detection)), ratios, z, qp.shifts)
    if robust.quantile > 0:
        robust_look(model, clean, result, detection.bias, robust, prior)
    result.seconds = time.perf_counter() - start
    return result


def robust_look(model: Classifier, clean: Split, result: ScanResult, bias: bool, cfg: RobustLookConfig,
                prior: PriorConfig) -> None:
    """The robust QP read with its own bounds: the classes it flags that the plain test did not
    are added to ``result.robust``, and their TAC is the robust s_t."""
    qp = reconstruct(model, result.latents, bias, cfg.quantile)
    weight = class_prior(qp.norms, clean.y, model.num_classes, prior)
    bounds = DetectionConfig(threshold=cfg.threshold, max_relative=cfg.max_relative, high_relative=0.0)
    look = Look(qp, weight, detect(corrected(qp.norms, weight), bounds))
    result.robust_look = look
    result.robust = [k for k in look.detection.flagged if k not in result.plain.detection.flagged]
    result.shifts = result.shifts.clone()
    result.shifts[result.robust] = qp.shifts[result.robust]
