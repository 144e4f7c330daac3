"""SAU's cores: shared PGD stays in the L_inf ball and the valid range, the shared-adversarial
masks on hand-made logits, the JS divergence on known distributions, the shared loss, validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from tacrecon.defenses import create_defense
from tacrecon.defenses.sau import attack_masks, js_divergence, potential_poison, project, shared_adversarial_loss, shared_pgd
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


def logits_for(preds, classes=3):
    """Logits (N, C) whose argmax is ``preds``."""
    return F.one_hot(torch.tensor(preds), classes).float() * 5.0


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = create_model("test_cnn", num_classes=4).eval()
    ref = create_model("test_cnn", num_classes=4).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 12, 12, generator=g)
    x[:4] = 0.0
    x[4:8] = 1.0  # images at the edges of the valid range
    return model, ref, x, torch.randint(0, 4, (16,), generator=g)


@pytest.mark.parametrize("init", ["max", "min", "zero", "random"])
def test_pgd_stays_in_the_ball_and_the_valid_range(pair, init):
    model, ref, x, y = pair
    delta = shared_pgd(model, ref, x, y, eps=0.2, step=0.2, steps=3, beta_adv=0.01, beta_shared=1.0, init=init,
                       clamp=True, generator=torch.Generator().manual_seed(0))
    assert delta.shape == x.shape and not delta.requires_grad
    assert delta.abs().max() <= 0.2 + 1e-7
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1


def test_pgd_without_clamp_leaves_the_valid_range(pair):
    model, ref, x, y = pair
    delta = shared_pgd(model, ref, x, y, eps=0.2, step=0.2, steps=0, beta_adv=0.01, beta_shared=1.0, init="max",
                       clamp=False)
    assert torch.allclose(delta, torch.full_like(x, 0.2))  # BackdoorBench's start: +eps everywhere
    assert (x + delta).max() > 1


def test_pgd_moves_and_does_not_touch_the_models(pair):
    model, ref, x, y = pair
    before = [p.clone() for p in model.parameters()]
    start = project(torch.full_like(x, 0.2), x, 0.2, True)
    delta = shared_pgd(model, ref, x, y, eps=0.2, step=0.05, steps=2, beta_adv=0.01, beta_shared=1.0)
    assert not torch.equal(delta, start)
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, model.parameters()))


def test_project():
    x = torch.tensor([0.0, 0.1, 0.5, 0.95, 1.0]).view(1, 1, 1, 5)
    delta = torch.tensor([-0.5, -0.5, 0.5, 0.5, 0.1]).view(1, 1, 1, 5)
    assert project(delta, x, 0.2, True).flatten().tolist() == pytest.approx([0.0, -0.1, 0.2, 0.05, 0.0])
    assert project(delta, x, 0.2, False).flatten().tolist() == pytest.approx([-0.2, -0.2, 0.2, 0.2, 0.1])


def test_attack_masks_on_hand_made_logits():
    clean, clean_ref = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 1, 0, 1])
    adv, adv_ref = logits_for([0, 1, 2, 2, 2]), logits_for([1, 1, 1, 2, 0])
    fooled, fooled_ref, shared = attack_masks(clean, clean_ref, adv, adv_ref)
    # sample 0: only f_ref fooled; 1: both into 1 (shared); 2: f into 2, f_ref kept its clean class 1;
    # 3: both into 2 (shared); 4: both fooled, into different classes (not shared)
    assert fooled.tolist() == [False, True, True, True, True]
    assert fooled_ref.tolist() == [True, True, False, True, True]
    assert shared.tolist() == [False, True, False, True, False]


def test_potential_poison_on_hand_made_logits():
    y = torch.tensor([0, 0, 0, 1])
    ref_clean, ref_adv = logits_for([0, 1, 0, 2]), logits_for([2, 1, 0, 0])
    mask, pred = potential_poison(y, ref_clean, ref_adv)
    # 0: 2 != y and != clean pred; 1: adv == clean pred (f_ref was already wrong); 2: adv == y; 3: off both
    assert mask.tolist() == [True, False, False, True]
    assert pred.tolist() == [2, 1, 0, 0]


def test_js_divergence_on_known_distributions():
    same = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(js_divergence(same, same)) == pytest.approx(0.0, abs=1e-7)
    disjoint_p, disjoint_q = torch.tensor([[40.0, 0.0]]), torch.tensor([[0.0, 40.0]])
    assert float(js_divergence(disjoint_p, disjoint_q)) == pytest.approx(math.log(2), abs=1e-5)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    m = (p + q) / 2
    expected = 0.5 * float((p * (p / m).log()).sum() + (q * (q / m).log()).sum())
    js = js_divergence(p.log()[None], q.log()[None])
    assert float(js) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(js, js_divergence(q.log()[None], p.log()[None]))
    assert js_divergence(torch.randn(7, 5), torch.randn(7, 5)).shape == (7,)


def test_shared_adversarial_loss():
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    logits, k = probs.log(), torch.tensor([0, 1, 2])
    mask = torch.tensor([True, True, False])
    expected = (-math.log(0.5 + 1e-6) - math.log(0.5 + 1e-6) - math.log(0.2 + 1e-6) - math.log(0.2 + 1e-6)) / 2 / 3
    assert float(shared_adversarial_loss(logits, k, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(shared_adversarial_loss(logits, k, torch.zeros(3, dtype=torch.bool))) == 0.0
    sure = torch.tensor([[30.0, 0.0, 0.0]])  # p_k ~ 1: the clamps keep the loss finite
    assert math.isfinite(float(shared_adversarial_loss(sure, torch.tensor([0]), torch.tensor([True]))))
    leaf = logits.clone().requires_grad_(True)
    shared_adversarial_loss(leaf, k, mask).backward()
    assert leaf.grad[0, 0] > 0 and leaf.grad[1, 1] > 0 and torch.equal(leaf.grad[2], torch.zeros(3))


@pytest.mark.parametrize("field, value", [("epochs", -1), ("eps", -0.1), ("init", "ones"), ("lmd_shared", -1.0),
                                          ("batch_size", 0)])
def test_validate_names_the_field(field, value):
    with pytest.raises(TacreconError, match=field):
        create_defense("sau", **{field: value})
