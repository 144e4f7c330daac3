"""Outlier statistics: MAD index on hand-made vectors, calibration of the minimum test."""

import math

import numpy as np
import pytest
import torch

from tacrecon.stats import (
    anomaly_index,
    corrected,
    count_prior,
    imbalance_pvalue,
    min_test_pvalue,
    relative_scores,
    theil_sen_slope,
)


def test_anomaly_index_by_hand():
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    # median 3, |dev| = 2,1,0,1,7 -> MAD 1 -> index = (3 - u) / 1.4826
    expected = (3 - scores) / 1.4826
    torch.testing.assert_close(anomaly_index(scores), expected.double())


def test_relative_scores_by_hand():
    rel = relative_scores(torch.tensor([2.0, 4.0, 4.0, 8.0, float("inf")]))
    assert rel[:4].tolist() == pytest.approx([0.5, 1.0, 1.0, 2.0]) and rel[4] == float("inf")


def test_anomaly_index_ignores_infinite():
    index = anomaly_index(torch.tensor([1.0, 2.0, 3.0, float("inf")]))
    assert index[3] == -math.inf and index[0] > 0


def test_outlier_found_and_no_outlier_not_flagged():
    g = torch.Generator().manual_seed(0)
    base = 5 + 0.3 * torch.randn(10, generator=g)
    planted = base.clone()
    planted[4] = 1.0
    assert min_test_pvalue(planted) < 0.01
    assert anomaly_index(planted)[4] > 5
    assert min_test_pvalue(base) > 0.05


@pytest.mark.parametrize("count", [10, 43])
def test_min_test_false_positive_rate_is_alpha(count):
    rng = np.random.default_rng(1)
    pvalues = [min_test_pvalue(torch.from_numpy(np.exp(rng.normal(2.0, 0.5, count)))) for _ in range(2000)]
    for alpha in (0.05, 0.1):
        assert abs(np.mean(np.array(pvalues) < alpha) - alpha) < 0.02


def test_min_test_degenerate_inputs():
    assert min_test_pvalue(torch.tensor([1.0, 2.0])) == 1.0
    assert min_test_pvalue(torch.tensor([1.0, 2.0, float("inf"), float("inf")])) == 1.0


def test_anomaly_index_without_spread():
    # every class at the same cost: nothing stands out; one class apart from identical others: it does
    assert torch.equal(anomaly_index(torch.full((10,), 3.0)), torch.zeros(10, dtype=torch.float64))
    index = anomaly_index(torch.tensor([1.0, 3.0, 3.0, 3.0, 3.0]))
    assert index[0] > 1e6 and bool((index[1:] == 0).all())


def test_theil_sen_slope_ignores_an_outlier_and_equal_x():
    x = torch.arange(10, dtype=torch.float64)
    y = 2 * x + 1
    y[3] = -50.0  # one wild point moves least squares, not the median of the slopes
    assert theil_sen_slope(x, y) == pytest.approx(2.0)
    assert theil_sen_slope(torch.ones(5), torch.arange(5.0)) == 0.0  # no pair with distinct x
    # two pairs with distinct x, slopes 1 and 3: the median is their mean, not the lower one
    assert theil_sen_slope(torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 2.0, 3.0])) == pytest.approx(2.0)


def test_count_prior_recovers_the_power_law_and_spares_the_outlier():
    counts = torch.tensor([400, 200, 100, 50, 25, 400, 200, 100, 50, 25])
    norms = 3.0 * counts.double() ** -0.5
    norms[4] *= 0.4  # a rare class made cheap: the backdoor target
    prior = count_prior(norms, counts)
    corrected = norms / prior
    others = torch.cat([corrected[:4], corrected[5:]])
    torch.testing.assert_close(others, torch.full_like(others, float(others[0])))
    assert float(corrected[4]) == pytest.approx(0.4 * float(others[0]))
    # the uncorrected norms hide it: a frequent class is cheaper than the target
    assert float(norms[0]) < float(norms[4])
    assert float(count_prior(norms, torch.full((10,), 50))[0]) == 1.0  # equal counts: no correction
    with_inf = norms.clone()
    with_inf[1] = float("inf")  # an unreachable class does not enter the fit
    torch.testing.assert_close(count_prior(with_inf, counts), prior)


def test_imbalance_pvalue_tells_sampling_noise_from_imbalance():
    assert imbalance_pvalue(torch.tensor([100] * 10)) == 1.0
    # 72 images of a balanced source: spans 3.5x by chance, the test does not reject
    assert imbalance_pvalue(torch.tensor([6, 4, 8, 11, 4, 6, 14, 7, 8, 4])) > 0.1
    assert imbalance_pvalue(torch.tensor([112, 60, 30, 15, 11] * 4)) < 1e-6  # GTSRB-like
    # the chi-square survival function: 9 degrees of freedom, statistic 16.92 -> p = 0.05
    counts = torch.tensor([10.0] * 10)
    counts[0], counts[1] = 10 + 16.92 ** 0.5 * 10 ** 0.5 / 2 ** 0.5, 10 - 16.92 ** 0.5 * 10 ** 0.5 / 2 ** 0.5
    assert imbalance_pvalue(counts) == pytest.approx(0.05, abs=1e-3)


def test_corrected_divides_by_the_prior_or_leaves_the_scores():
    scores = torch.tensor([2.0, 4.0, 9.0])
    assert corrected(scores, None) is scores
    assert torch.equal(corrected(scores, torch.tensor([2.0, 1.0, 3.0])), torch.tensor([1.0, 4.0, 3.0]))
