"""Outlier statistics for per-class scores: the MAD anomaly index and a calibrated test of the minimum.

Both look for a class whose score (e.g. the norm of its minimal latent shift) is unusually
*small* compared with the other classes.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

MAD_CONSTANT = 1.4826  # makes the MAD a consistent estimate of the standard deviation of a normal


def anomaly_index(scores: Tensor) -> Tensor:
    """Neural-Cleanse anomaly index (median - u_k) / (1.4826 MAD) of each score (C,).

    Positive for scores below the median; +inf entries (unreachable classes) get -inf.
    """
    finite = scores[torch.isfinite(scores)].double()
    median = finite.median()
    mad = MAD_CONSTANT * (finite - median).abs().median()
    index = (median - scores.double()) / mad.clamp_min(1e-12)
    return torch.where(torch.isfinite(scores), index, torch.full_like(index, -float("inf")))


def relative_scores(scores: Tensor) -> Tensor:
    """Each score (C,) over the median of the finite scores: 1 for a typical class, 0.5 for a
    class reached at half the typical cost. Scale-free like the anomaly index, but unlike it
    not divided by the spread, so a gap that is tiny in absolute terms stays tiny when every
    class lies at almost the same distance (where the MAD is tiny too)."""
    finite = scores[torch.isfinite(scores)].double()
    return scores.double() / finite.median().clamp_min(1e-12)


def theil_sen_slope(x: Tensor, y: Tensor) -> float:
    """Median of the pairwise slopes (y_j - y_i) / (x_j - x_i) over the pairs with x_i != x_j
    ((n,) each): a line fit that a few outliers (a backdoor target) cannot move. 0 without pairs.
    The usual median: the mean of the two middle slopes when their number is even (torch's
    ``median`` would take the lower one)."""
    x, y = x.double().flatten(), y.double().flatten()
    i, j = torch.triu_indices(len(x), len(x), 1)
    dx = x[j] - x[i]
    ok = dx.abs() > 1e-12
    return float(((y[j] - y[i])[ok] / dx[ok]).quantile(0.5)) if bool(ok.any()) else 0.0


def imbalance_pvalue(counts: Tensor) -> float:
    """p-value of Pearson's chi-square test that ``counts`` (C,) were drawn from equal class
    probabilities: small when a clean set's class counts are evidence of an imbalanced source."""
    c = counts.double().flatten()
    if len(c) < 2 or float(c.sum()) == 0:
        return 1.0
    expected = c.sum() / len(c)
    statistic = ((c - expected) ** 2 / expected).sum()
    return float(torch.special.gammaincc(torch.tensor((len(c) - 1) / 2, dtype=torch.float64), statistic / 2))


def trend_prior(scores: Tensor, x: Tensor) -> Tensor:
    """The part of each class's score (C,) that a covariate ``x`` (C,) explains:
    ``exp(b (x_k - median x))``, with b the :func:`theil_sen_slope` of log score on x over the
    finite positive scores. Dividing the scores by it removes the trend."""
    x = x.double()
    finite = torch.isfinite(scores) & (scores > 0)
    slope = theil_sen_slope(x[finite], scores[finite].double().log())
    return torch.exp(slope * (x - x.median()))


def count_prior(scores: Tensor, counts: Tensor) -> Tensor:
    """:func:`trend_prior` on the log class counts ``n_k`` (C,), i.e. ``(n_k / median n)^b``: the
    scores divided by it leave a class judged against classes of its own frequency (a frequent
    class of an imbalanced data set is cheap to reach without any backdoor)."""
    return trend_prior(scores, counts.double().clamp_min(1).log())


def corrected(scores: Tensor, prior: Tensor | None) -> Tensor:
    """``scores`` (C,) divided by a class ``prior`` (C,), or unchanged where there is none."""
    return scores if prior is None else scores / prior


def min_deviate(values: np.ndarray) -> float:
    """(x_min - mean of the others) / (std of the others): how far the smallest value stands out."""
    order = np.sort(values)
    others = order[1:]
    return float((order[0] - others.mean()) / max(others.std(ddof=1), 1e-12))


@functools.lru_cache(maxsize=64)
def null_min_deviates(count: int, draws: int = 20000, seed: int = 0) -> np.ndarray:
    """Sorted null sample of :func:`min_deviate` for ``count`` i.i.d. normal values.

    The statistic is location- and scale-free, so this null is exact for any normal: the
    selection of the minimum (the "extreme selection bias") is part of the simulation.
    """
    rng = np.random.default_rng(seed)
    x = np.sort(rng.standard_normal((draws, count)), axis=1)
    others = x[:, 1:]
    stats = (x[:, 0] - others.mean(1)) / others.std(1, ddof=1)
    return np.sort(stats)


def min_test_pvalue(scores: Tensor, log: bool = True) -> float:
    """p-value that the smallest score is an outlier among the C scores (C,).

    The null hypothesis: the (log) scores are i.i.d. normal, so the smallest one is only the
    smallest of C draws. p = P_null(deviate <= observed), with the null simulated exactly
    (:func:`null_min_deviates`), so selecting the minimum does not bias the test. Infinite
    scores (unreachable classes) are left out.
    """
    values = scores[torch.isfinite(scores)].detach().double().cpu().numpy()
    if values.size < 3:
        return 1.0
    if log:
        values = np.log(np.maximum(values, 1e-12))
    null = null_min_deviates(int(values.size))
    observed = min_deviate(values)
    return float((np.searchsorted(null, observed, side="right") + 1) / (null.size + 1))
