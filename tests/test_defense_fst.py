"""FST: the head re-initialised at its old norm, the inner-product penalty, the norm projection."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tacrecon.data import load_dataset
from tacrecon.defenses import create_defense
from tacrecon.defenses.fst import feature_shift_loss, project_norm, reinit_head
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


def test_reinit_head_draws_a_new_weight_at_the_old_norm():
    head = nn.Linear(64, 10)
    with torch.no_grad():
        head.weight.mul_(5)
    old_w, old_b = head.weight.detach().clone(), head.bias.detach().clone()
    returned = reinit_head(head, torch.Generator().manual_seed(0))
    assert torch.equal(returned, old_w)
    assert torch.allclose(head.weight.norm(), old_w.norm())
    assert torch.equal(head.bias, old_b)
    assert abs(F.cosine_similarity(head.weight.flatten(), old_w.flatten(), dim=0)) < 0.2
    # U(-1/sqrt(d), 1/sqrt(d)) from the generator, then rescaled
    fresh = (torch.rand(10, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1) / math.sqrt(64)
    assert torch.allclose(head.weight, fresh * old_w.norm() / fresh.norm(), atol=1e-6)


def test_reinit_head_is_deterministic_under_the_generator():
    a, b = nn.Linear(8, 3), nn.Linear(8, 3)
    b.load_state_dict(a.state_dict())
    reinit_head(a, torch.Generator().manual_seed(3))
    reinit_head(b, torch.Generator().manual_seed(3))
    assert torch.equal(a.weight, b.weight)


def test_project_norm():
    w = torch.randn(4, 5)
    project_norm(w, torch.tensor(2.5))
    assert torch.allclose(w.norm(), torch.tensor(2.5))


def test_feature_shift_loss_projects_then_adds_the_inner_product():
    model = create_model("test_cnn", in_chans=1)
    head = model.get_classifier()
    old = torch.randn_like(head.weight)
    with torch.no_grad():
        head.weight.mul_(3)  # off the norm: the loss puts it back first
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    loss = feature_shift_loss(head, old, alpha=0.2)(model, x, y)
    assert torch.allclose(head.weight.norm(), old.norm())
    expected = F.cross_entropy(model(x), y) + 0.2 * (head.weight * old).sum()
    assert torch.allclose(loss, expected)
    head.weight.grad = None
    (0.2 * (head.weight * old).sum()).backward()
    assert torch.allclose(head.weight.grad, 0.2 * old)  # the penalty pushes W away from W_old


def test_fit_keeps_the_head_norm_and_moves_it_away_from_the_old_head():
    data = load_dataset("digits")
    clean = data.train.subset(torch.arange(256))
    model = create_model("test_cnn", in_chans=1)
    fst = create_defense("fst", "smoke", epochs=2).fit(model, clean, torch.Generator().manual_seed(0))
    old, new = model.get_classifier().weight, fst.model_.get_classifier().weight
    assert torch.allclose(new.norm(), old.norm(), rtol=1e-5)
    assert fst.stats_["head_cosine"] < 0.5
    assert not torch.equal(fst.model_.features[0][0].weight, model.features[0][0].weight)  # backbone tuned too


def test_validate():
    with pytest.raises(TacreconError, match="alpha"):
        create_defense("fst", alpha=-0.1)


def test_the_recipe_fine_tunes_on_random_crops_as_the_official_code_does():
    from tacrecon.data.split import Split

    clean = Split(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    assert create_defense("fst").train_config(clean).crop_padding == 4
    assert create_defense("fst", crop_padding=0).train_config(clean).crop_padding == 0
