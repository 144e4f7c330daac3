"""The pairwise look: shapes and diagonal, agreement with the per-pair QP, a planted source-specific
shortcut and an all-to-all mapping flagged, a clean synthetic head quiet."""

import pytest
import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.models import as_classifier
from tacrecon.qp import solve_latent_qp
from tacrecon.tac.pairwise import PairwiseConfig, pair_scores, pairwise_look, pairwise_norms, relative_norms

C, D, PER = 6, 24, 60
LOOK = PairwiseConfig(spread_threshold=0.2, pair_threshold=0.3)  # the synthetic head's scale, not the tuned one


def clean_head(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear head (C, D) with unit-norm class directions and latents clustered around them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=1) * 3
    y = torch.arange(C).repeat_interleave(PER)
    z = w[y] + 0.2 * torch.randn(len(y), D, generator=g)
    return w, z, y


def plant(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, pairs: list[tuple[int, int]], beta: float) -> torch.Tensor:
    """Latents with a cheap pair per (s, t): class s's samples moved a share ``beta`` of the way
    from w_s towards w_t (still classified s), so one short shift sends all of them to t while t's
    own samples stay where they were (the pair is cheap one way only)."""
    z = z.clone()
    for s, t in pairs:
        z[y == s] += beta * (w[t] - w[s])
    return z


def model_of(w: torch.Tensor) -> nn.Module:
    head = nn.Linear(w.shape[1], C)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.zero_()
    return as_classifier(nn.Sequential(nn.Flatten(), head), num_classes=C)


def as_split(z: torch.Tensor, y: torch.Tensor) -> Split:
    return Split(z.reshape(len(z), 1, 1, -1), y)


def test_shapes_diagonal_and_per_pair_agreement():
    w, z, y = clean_head()
    b = torch.linspace(-0.2, 0.2, C)
    norms, iters = pairwise_norms(z, y, w, b)
    assert norms.shape == (C, C) and iters.shape == (C, C)
    assert torch.isnan(norms.diagonal()).all() and (iters.diagonal() == 0).all()
    off = ~torch.eye(C, dtype=torch.bool)
    assert torch.isfinite(norms[off]).all() and (norms[off] > 0).all()
    for s, t in [(0, 1), (3, 5), (5, 2)]:  # the batched rows equal one QP per pair
        alone = solve_latent_qp(z[y == s], w, b, classes=[t]).norms[0]
        assert norms[s, t] == pytest.approx(float(alone), rel=1e-9)
    rel = relative_norms(norms)
    assert torch.allclose(rel.nanmedian(dim=1).values, torch.ones(C, dtype=torch.float64))


def test_min_samples_leaves_a_source_out():
    w, z, y = clean_head()
    keep = (y != 2) | (torch.arange(len(y)) % PER < 4)  # class 2 keeps 4 samples
    norms, _ = pairwise_norms(z[keep], y[keep], w, min_samples=10)
    assert torch.isnan(norms[2]).all() and torch.isfinite(norms[0, 1:]).all()
    scores = pair_scores(norms)
    assert torch.isnan(scores[2]).all() and torch.isnan(scores[:, 2]).all()


def test_scores_are_antisymmetric():
    w, z, y = clean_head()
    scores = pair_scores(pairwise_norms(z, y, w)[0])
    off = ~torch.eye(C, dtype=torch.bool)
    assert torch.allclose(scores[off], -scores.T[off])


def test_clean_head_flags_nothing():
    w, z, y = clean_head()
    for cfg in (PairwiseConfig(), LOOK):
        result = pairwise_look(model_of(w), as_split(z, y), cfg)
        assert result.flagged == [] and not result.all_to_all and not result.backdoored
    assert result.norms.shape == result.scores.shape == result.relative.shape == (C, C)
    assert result.seconds > 0 and result.iterations > 0


def test_planted_source_specific_pair_is_flagged():
    w, z, y = clean_head()
    zb = plant(z, y, w, [(1, 4)], beta=0.35)
    model = model_of(w)
    assert (model(as_split(zb, y).x).argmax(1) == y).all()  # the model still classifies every sample right
    result = pairwise_look(model, as_split(zb, y), LOOK)
    assert result.flagged == [(1, 4)] and not result.all_to_all
    assert result.relative[1, 4] < 0.7 and result.relative[4, 1] > 0.85


def test_planted_all_to_all_fires_the_spread_test():
    w, z, y = clean_head()
    pairs = [(s, (s + 1) % C) for s in range(C)]
    result = pairwise_look(model_of(w), as_split(plant(z, y, w, pairs, beta=0.3), y), LOOK.replace(pair_threshold=10.0))
    assert result.all_to_all and set(result.flagged) == set(pairs)


def test_record_and_errors():
    w, z, y = clean_head()
    record = pairwise_look(model_of(w), as_split(z, y)).record()
    assert record["pairwise_norms"][0][0] is None and len(record["pairwise_scores"]) == C
    with pytest.raises(TacreconError):
        pairwise_norms(z, y[:-1], w)
    with pytest.raises(TacreconError):
        PairwiseConfig.from_dict({"min_samples": 0})
    with pytest.raises(TacreconError):
        PairwiseConfig.from_dict({"spread": 0.3})


def test_pair_targets_are_the_new_targets_of_the_flagged_pairs_best_first():
    from types import SimpleNamespace

    from tacrecon.tac.pairwise import pair_targets

    look = SimpleNamespace(flagged=[(1, 4), (2, 0), (3, 4), (5, 7)])
    assert pair_targets(SimpleNamespace(flagged=[0], pairwise=look)) == [4, 7]  # 0: the scan's own already
    assert pair_targets(SimpleNamespace(flagged=[0], pairwise=None)) == []
