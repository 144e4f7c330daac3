"""The repair's residual estimate (tac/residual.py): the patch search, its score, its contract."""

import torch

from tacrecon.models import as_classifier
from tacrecon.tac.config import SelfCheckConfig
from tacrecon.tac.residual import Residual, compared_classes, estimate_residual, hard_budget

FAST = SelfCheckConfig(pixels=6, steps=40)


def test_hard_budget_keeps_the_largest_values():
    mask = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    kept = hard_budget(mask, 2)
    assert torch.equal(kept, torch.tensor([[[0.0, 0.9], [0.5, 0.0]]]))
    assert torch.equal(hard_budget(mask, 10), mask)  # a budget over the image keeps it all


def test_compared_classes_exclude_the_target_and_draw_when_many():
    assert compared_classes(5, 2, 9, torch.Generator()) == [0, 1, 3, 4]
    drawn = compared_classes(43, 7, 9, torch.Generator().manual_seed(0))
    assert len(drawn) == 9 and 7 not in drawn and drawn == sorted(set(drawn))
    assert drawn == compared_classes(43, 7, 9, torch.Generator().manual_seed(0))


def test_score_is_the_target_minus_the_median_of_the_others():
    assert Residual(0, 0.9, {1: 0.1, 2: 0.5, 3: 0.2}).score == 0.9 - 0.2
    assert Residual(0, 0.3, {1: 0.1, 2: 0.5}).score == 0.3 - 0.1  # the lower median of an even count
    assert Residual(0, 0.4).record()["score"] == 0.4


def test_planted_backdoor_stands_out_and_the_model_is_left_as_it_was(planted):
    art, clean = planted["badnets"]
    model = as_classifier(art.model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    residual = estimate_residual(model, clean, 0, FAST, torch.Generator().manual_seed(0))
    assert residual.success > 0.9 and residual.score > FAST.margin, residual.record()
    assert sorted(residual.others) == list(range(1, 10))
    assert model.training and [p.requires_grad for p in model.parameters()] == grads
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
