"""tacrecon.tac.detect: the per-class QP, the test, the class-count prior, the ratios."""

import pytest
import torch
from conftest import make_tac

from tacrecon.errors import TacreconError
from tacrecon.models import create_model, latents_of
from tacrecon.tac.config import DetectionConfig, PriorConfig
from tacrecon.tac.detect import class_prior, detect, reconstruct, universality_ratios


def loose(**changes) -> DetectionConfig:
    """The test without the relative bounds (one-sided, no gate), ``changes`` on top."""
    return DetectionConfig(**{"max_relative": 1.0, "high_relative": 0.0, **changes})


def test_reconstruct_shifts_send_every_clean_sample_to_their_class(digits):
    model = create_model("test_cnn", in_chans=1).eval()
    clean = digits.train.subset(torch.arange(100))
    qp = reconstruct(model, latents_of(model, clean.x))
    z = latents_of(model, clean.x).double()
    head = model.get_classifier().double()
    for k in range(10):
        pred = head(z + qp.shifts[k]).argmax(1)
        margin = head(z + qp.shifts[k])[:, k] - head(z + qp.shifts[k]).max(1).values
        assert bool((margin >= -1e-6).all()), k  # every sample reaches class k (up to ties)
        assert pred.numel() == 100
    assert torch.allclose(qp.norms, qp.shifts.norm(dim=1))


def test_detect_rules():
    norms = torch.tensor([3.0, 10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3])
    found = detect(norms, loose())
    assert found.flagged == [0] and found.anomaly_index[0] > 10 and found.p_value < 0.01
    flat = torch.tensor([10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3, 10.6])
    assert detect(flat, loose()).flagged == [] and detect(flat, loose(rule="pvalue")).flagged == []
    assert detect(norms, loose(rule="pvalue")).flagged == [0] and detect(norms, loose(rule="both")).flagged == [0]
    two = norms.clone()
    two[5] = 3.2
    assert detect(two, loose()).flagged == [0, 5]  # multi-target: both, most anomalous first
    with pytest.raises(TacreconError, match="rule"):
        DetectionConfig.from_dict({"rule": "vote"})


def test_detect_relative_gate_ignores_a_tiny_gap_between_tight_norms():
    # a clean model whose classes all lie ~10 apart except one at 9.4: a huge MAD index (the
    # spread is tiny) but only 6% below the median, which is not a backdoor's shortcut
    tight = torch.tensor([9.4, 10.0, 10.02, 9.98, 10.01, 9.99, 10.03, 9.97, 10.0, 10.02])
    assert detect(tight, loose()).flagged == [0]
    found = detect(tight, loose(max_relative=0.8))
    assert found.flagged == [] and found.relative[0] == pytest.approx(9.4 / 10.0, rel=1e-3)
    backdoor = tight.clone()
    backdoor[0] = 5.0
    assert detect(backdoor, loose(max_relative=0.8)).flagged == [0]


def test_detect_high_side_flags_an_unreachable_class_only_when_asked():
    # SIG at a 10% rate: the target class is reached only at ~1.5x the typical cost
    norms = torch.tensor([15.0, 10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3])
    assert detect(norms, loose()).flagged == []  # one-sided by default
    found = detect(norms, loose(max_relative=0.85, high_relative=1.25))
    assert found.flagged == [0] and found.high_side == [0] and found.anomaly_index[0] < -3
    mild = norms.clone()
    mild[0] = 11.5  # an index far below -3, but only 13% above the median: a hard class, no backdoor
    assert detect(mild, loose(high_relative=1.25)).flagged == []
    both = norms.clone()
    both[4] = 3.0
    assert detect(both, loose(max_relative=0.85, high_relative=1.25)).flagged == [4, 0]  # the small side first
    assert detect(norms, loose(rule="pvalue", high_relative=1.25)).flagged == []  # the test of the minimum only


def test_class_prior_only_where_the_clean_counts_are_imbalanced():
    norms = torch.tensor([1.0, 1.2, 0.9, 1.1])
    balanced = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])  # 3 / 2 = 1.5 < 2: sampling noise
    imbalanced = torch.repeat_interleave(torch.arange(4), torch.tensor([80, 40, 20, 20]))
    assert class_prior(norms, balanced, 4) is None
    assert class_prior(norms, imbalanced, 4) is not None
    assert class_prior(norms, imbalanced, 4, PriorConfig(mode="off")) is None
    assert class_prior(norms, balanced, 4, PriorConfig(mode="counts")) is not None
    assert class_prior(norms, imbalanced, 4, PriorConfig(ratio=10)) is None
    noisy = torch.repeat_interleave(torch.arange(10), torch.tensor([6, 4, 8, 11, 4, 6, 14, 7, 8, 4]))
    assert class_prior(torch.rand(10), noisy, 10) is None  # spans 3.5x, by chance alone
    with pytest.raises(TacreconError, match="prior in auto, counts, off, prior_ratio"):
        PriorConfig.from_dict({"mode": "yes"})


def test_class_prior_turns_a_frequent_clean_class_into_a_typical_one():
    # 20 classes, norms falling with the count as n^-0.5; class 0 has 4x the images of the others
    counts = torch.tensor([400] + [100] * 19)
    norms = counts.double() ** -0.5 * (1 + 0.02 * torch.randn(20, generator=torch.Generator().manual_seed(0)))
    labels = torch.repeat_interleave(torch.arange(20), counts)
    assert detect(norms, loose(max_relative=0.85)).flagged == [0]  # a false positive without the prior
    prior = class_prior(norms, labels, 20)
    assert detect(norms / prior, loose(max_relative=0.85)).flagged == []
    norms[12] *= 0.5  # a rare class with a backdoor: cheap for its frequency
    prior = class_prior(norms, labels, 20)
    assert detect(norms / prior, loose(max_relative=0.85)).flagged == [12]


def test_universality_ratios_are_at_least_one(digits):
    torch.manual_seed(3)
    model = create_model("test_cnn", in_chans=1).eval()
    clean = digits.train.subset(torch.arange(80))
    z = latents_of(model, clean.x)
    qp = reconstruct(model, z)
    ratios = universality_ratios(model, z, clean.y, qp)
    assert ratios.shape == (10,)
    reached = qp.norms == 0  # an untrained model may already send every sample to a class
    assert bool((ratios[~reached] >= 1 - 1e-9).all()), ratios  # ||s_k|| >= every d_ik
    assert bool((ratios[reached] == 0).all())
    tac = make_tac(score="ratio", repair=False).fit(model, clean)
    assert tac.to_dict()["score"] == "ratio" and len(tac.scores()["ratios"]) == 10
