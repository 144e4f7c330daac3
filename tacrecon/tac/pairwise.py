"""TAC's pairwise look: the latent QP of every ordered class pair (s, t), for all-to-all and
source-specific backdoors.

The scan's QP asks *every* clean sample to reach class t; an all-to-all backdoor (y -> y + 1) or a
source-specific one (TaCT: only class s -> t) makes no class cheap for all samples, so the scan
sees nothing. Here the same QP is restricted to the clean samples of one source class s:

    n[s, t] = min ||d||  s.t.  every clean latent z of class s has z + d classified as t,

a (C, C) matrix of norms. It is exact and reuses :func:`tacrecon.qp.solve_latent_qp`: one call per
source solves that source's C - 1 targets (the offsets of the call are the max-plus product over
the source's samples only; the Gram matrix is the head's), so the whole matrix costs about one
scan's offsets (n C^2) plus C (C - 1) small active-set solves: with 250 clean latents a class
(d = 512), 0.04 s at C = 10 and 0.7 s at C = 43 on one CPU thread; 0.2 s on GTSRB's 5% clean set
(docs/benchmarks/tac_pairwise.md).

The statistic (ours; no paper defines one). Each row is divided by its median, which removes the
spread of the source class (a source with few or tightly packed samples is cheap to move
anywhere): r[s, t] = log(median_t' n[s, t'] / n[s, t]) > 0 for a pair cheaper than its row's
typical one. A clean model has cheap pairs too (similar classes: cat and dog), and those are
cheap both ways; a backdoor pair is cheap one way only. The pair score is therefore the
antisymmetric part

    a[s, t] = r[s, t] - r[t, s],

large when s reaches t more cheaply than its typical target while t reaches s at its typical cost.
Two tests read it: the *spread* (the median over sources of each source's best score) is large
when many sources each have a cheap target (all-to-all, and an all-to-one target, whose column is
cheap from every row); a single pair above ``pair_threshold`` is the source-specific case.

What the tuning models say (docs/benchmarks/tac_pairwise.md): at thresholds just above the 17
clean tuning models' largest values, it finds 3 of 6 digits all-to-all models, none of 3 TaCT
models, and the target column of 4 of 22 foreign all-to-one models. A backdoor pair is only
somewhat cheaper than its source's other pairs (median score 0.21-0.37 on the all-to-all models, at most
0.25 on TaCT's), about as much as the most similar classes of a clean CIFAR-10 or GTSRB model are
(up to 0.52); the minimal shift is not the trigger's own path either (the real trigger moves a
source's latents 1.6-2.4 times as far, all-to-one BadNets included). The look is therefore off
by default and not part of the scan.

Shape conventions: C classes, N clean samples, d latent units.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tacrecon.config import Config
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.models import Classifier, latents_of
from tacrecon.qp import check_inputs, solve_latent_qp
from tacrecon.tac.detect import ScanResult, check_labels, head_of


@dataclass
class PairwiseConfig(Config):
    """The pairwise look's hyperparameters (chosen on the tuning models, docs/benchmarks/tac_pairwise.md).

    Args:
        quantile: 1.0 asks every clean sample of the source to reach the target (the scan's
            form); q < 1 the q-quantile of the margins over the source's samples.
        bias: include the head's bias in the constraints.
        min_samples: a class with fewer clean samples is left out, as a source and as a target
            of the reverse pair (a QP over a handful of samples is mostly noise; GTSRB's 5% clean
            set has classes of 5-8 samples).
        spread_threshold: the all-to-all test: flagged when the median over sources of the best
            pair score exceeds this.
        pair_threshold: the single-pair test: a pair whose score exceeds this is flagged.
    """

    quantile: float = 1.0
    bias: bool = True
    min_samples: int = 10
    spread_threshold: float = 0.26
    pair_threshold: float = 0.53

    def validate(self) -> None:
        if not 0 < self.quantile <= 1 or self.min_samples < 1:
            raise TacreconError(f"need pairwise quantile in (0, 1] and min_samples >= 1, got "
                                f"{self.quantile}, {self.min_samples}")
        if self.spread_threshold <= 0 or self.pair_threshold <= 0:
            raise TacreconError(f"the pairwise thresholds must be > 0, got {self.spread_threshold}, "
                                f"{self.pair_threshold}")


def pairwise_norms(latents: Tensor, labels: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                   quantile: float | None = None, min_samples: int = 1) -> tuple[Tensor, Tensor]:
    """The minimal latent shift's norm for every ordered pair, exactly (float64, CPU).

    Args:
        latents: (N, d) clean latents. labels: (N,) their classes in 0..C-1.
        weight: (C, d) and bias: (C,) or None of the final linear layer.
        quantile: None for the max over the source's samples; q < 1 the lower q-quantile.
        min_samples: sources with fewer samples get a NaN row.
    Returns:
        norms (C, C): n[s, t], NaN on the diagonal and in the rows of left-out sources, +inf where
        no shift reaches t; iterations (C, C): active-set iterations per pair (0 where not solved).
    """
    check_inputs(latents, weight, bias)
    if labels.shape != (latents.shape[0],):
        raise TacreconError(f"labels must have shape ({latents.shape[0]},), got {tuple(labels.shape)}")
    num_classes = weight.shape[0]
    norms = torch.full((num_classes, num_classes), float("nan"), dtype=torch.float64)
    iters = torch.zeros(num_classes, num_classes, dtype=torch.long)
    y = labels.to(latents.device)
    for s in range(num_classes):
        mine = latents[y == s]
        if mine.shape[0] < min_samples or mine.shape[0] == 0:
            continue
        targets = [t for t in range(num_classes) if t != s]
        qp = solve_latent_qp(mine, weight, bias, quantile=quantile, classes=targets)
        norms[s, targets], iters[s, targets] = qp.norms, qp.iterations
    return norms, iters


def relative_norms(norms: Tensor) -> Tensor:
    """Each pair's norm over its row's median (finite entries): (C, C) -> (C, C); 1 for a typical
    target of that source, 0.5 for one reached at half the typical cost. NaN stays NaN."""
    finite = torch.where(torch.isfinite(norms), norms, torch.nan)
    return norms / finite.nanmedian(dim=1, keepdim=True).values.clamp_min(1e-12)


def pair_scores(norms: Tensor) -> Tensor:
    """a[s, t] = r[s, t] - r[t, s] with r = -log(relative norm): (C, C) -> (C, C), larger = more
    suspicious; NaN where either direction is missing or unreachable (+inf norm)."""
    rel = relative_norms(norms)
    r = torch.where(torch.isfinite(rel) & (rel > 0), -rel.clamp_min(1e-12).log(), torch.nan)
    return r - r.T


@dataclass
class PairwiseResult:
    """What the pairwise look found on one model.

    Attributes:
        norms: (C, C) n[s, t] (NaN: diagonal or left-out class; +inf: unreachable).
        relative: (C, C) n[s, t] over the median of row s.
        scores: (C, C) the pair scores a[s, t] (NaN where undefined).
        spread: the median over sources of each source's best score (NaN: fewer than two sources).
        all_to_all: whether the spread test fired.
        flagged: flagged (source, target) pairs, highest score first.
        iterations: total active-set iterations.
        seconds: wall time of the look (the latents when computed here, the QPs, the tests).
    """

    norms: Tensor
    relative: Tensor
    scores: Tensor
    spread: float
    all_to_all: bool
    flagged: list[tuple[int, int]] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0

    @property
    def backdoored(self) -> bool:
        """Whether any pair was flagged."""
        return bool(self.flagged)

    def record(self) -> dict[str, Any]:
        """The result as JSON-ready lists (NaN and inf as None)."""
        def clean(t: Tensor) -> list:
            return [[v if math.isfinite(v) else None for v in row] for row in t.tolist()]

        return {"pairwise_norms": clean(self.norms), "pairwise_relative": clean(self.relative),
                "pairwise_scores": clean(self.scores),
                "pairwise_spread": self.spread if math.isfinite(self.spread) else None,
                "pairwise_all_to_all": self.all_to_all,
                "pairwise_flagged": [list(p) for p in self.flagged], "pairwise_iterations": self.iterations,
                "pairwise_seconds": self.seconds}


def flag_pairs(scores: Tensor, cfg: PairwiseConfig) -> tuple[float, bool, list[tuple[int, int]]]:
    """The two tests on the pair scores (C, C): (spread, all-to-all fired, flagged pairs).

    The spread test flags each source's best pair whose score exceeds ``spread_threshold``; the
    pair test flags every pair above ``pair_threshold``.
    """
    rows = [s for s in range(scores.shape[0]) if bool(torch.isfinite(scores[s]).any())]
    if len(rows) < 2:
        return float("nan"), False, []
    best = scores[rows].nan_to_num(-float("inf")).max(dim=1)
    spread = float(best.values.median())
    picked = {(s, int(t)) for s, v, t in zip(rows, best.values.tolist(), best.indices.tolist())
              if spread > cfg.spread_threshold and v > cfg.spread_threshold}
    picked |= {(int(s), int(t)) for s, t in torch.nonzero(scores.nan_to_num(-float("inf")) > cfg.pair_threshold)}
    return spread, spread > cfg.spread_threshold, sorted(picked, key=lambda p: -float(scores[p]))


def pairwise_look(model: Classifier, clean: Split, cfg: PairwiseConfig | None = None,
                  latents: Tensor | None = None) -> PairwiseResult:
    """The pairwise QP of ``model`` (not modified) on the ``clean`` split, and its tests.

    ``latents`` (N, d): the clean split's latents when the caller has them (the scan's), else
    computed here. Classes with fewer than ``cfg.min_samples`` clean samples are left out.
    """
    cfg = cfg or PairwiseConfig()
    check_labels(model, clean)
    start = time.perf_counter()
    z = latents_of(model, clean.x) if latents is None else latents
    weight, bias = head_of(model, cfg.bias)
    quantile = None if cfg.quantile >= 1 else cfg.quantile
    norms, iters = pairwise_norms(z, clean.y, weight, bias, quantile=quantile, min_samples=cfg.min_samples)
    scores = pair_scores(norms)
    spread, fired, flagged = flag_pairs(scores, cfg)
    return PairwiseResult(norms, relative_norms(norms), scores, spread, fired, flagged, int(iters.sum()),
                          time.perf_counter() - start)


def pair_targets(found: ScanResult) -> list[int]:
    """The targets of the pairs the pairwise look of ``found`` flagged (highest score first) that
    the scan did not flag itself; empty when the look did not run."""
    if found.pairwise is None:
        return []
    targets: list[int] = []
    for _, t in found.pairwise.flagged:
        if t not in found.flagged and t not in targets:
            targets.append(t)
    return targets
