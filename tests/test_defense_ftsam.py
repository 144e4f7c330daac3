"""FT-SAM: the SAM perturbation (plain and adaptive), the two-pass step, BN statistics, the loss."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tacrecon.defenses import create_defense
from tacrecon.defenses.ftsam import frozen_bn_stats, sam_perturbation, sam_step, smoothed_cross_entropy
from tacrecon.errors import TacreconError
from tacrecon.models import create_model
from tacrecon.train import TrainConfig, make_optimizer, train_step


def params_with_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(3, 4, generator=g)), nn.Parameter(torch.randn(5, generator=g))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params


def test_plain_perturbation_has_norm_rho_along_the_gradient():
    params = params_with_grads()
    e = sam_perturbation(params, rho=0.7, adaptive=False)
    assert torch.allclose(torch.cat([t.flatten() for t in e]).norm(), torch.tensor(0.7))
    g = torch.cat([p.grad.flatten() for p in params])
    assert torch.allclose(torch.cat([t.flatten() for t in e]), 0.7 * g / g.norm())


def test_adaptive_perturbation_has_norm_rho_after_rescaling_by_the_weights():
    params = params_with_grads()
    e = sam_perturbation(params, rho=2.0, adaptive=True)
    w = torch.cat([p.detach().flatten() for p in params])
    g = torch.cat([p.grad.flatten() for p in params])
    flat = torch.cat([t.flatten() for t in e])
    assert torch.allclose(flat, 2.0 * w ** 2 * g / (w.abs() * g).norm())
    assert torch.allclose((flat / w.abs()).norm(), torch.tensor(2.0))


def test_perturbation_skips_parameters_without_gradient():
    params = params_with_grads()
    params[1].grad = None
    e = sam_perturbation(params, rho=1.0, adaptive=False)
    assert e[1].eq(0).all() and torch.allclose(e[0].norm(), torch.tensor(1.0))


def test_sam_step_descends_with_the_gradient_at_the_perturbed_point():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss_fn = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    cfg = TrainConfig(lr=0.1, momentum=0.0, weight_decay=0.0)
    # expected by hand: e = rho g / ||g||, gradient at w + e, SGD step from w
    w = [p.detach().clone() for p in model.parameters()]
    g = torch.autograd.grad(loss_fn(model, x, y), list(model.parameters()))
    norm = torch.cat([t.flatten() for t in g]).norm()
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p, gi in zip(shifted.parameters(), g):
            p.add_(0.5 * gi / norm)
    g2 = torch.autograd.grad(loss_fn(shifted, x, y), list(shifted.parameters()))
    opt = make_optimizer(model.parameters(), cfg)
    sam_step(model, opt, loss_fn, x, y, rho=0.5, adaptive=False, amp=False)
    for p, w0, gi in zip(model.parameters(), w, g2):
        assert torch.allclose(p, w0 - 0.1 * gi, atol=1e-6)


def test_sam_step_with_rho_zero_is_the_plain_step():
    model = create_model("test_cnn", in_chans=1)
    twin = copy.deepcopy(model)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    loss_fn = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    cfg = TrainConfig(lr=0.1)
    sam_step(model.train(), make_optimizer(model.parameters(), cfg), loss_fn, x, y, 0.0, True, False)
    train_step(twin.train(), make_optimizer(twin.parameters(), cfg), loss_fn, x, y, False)
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_sam_step_updates_bn_running_statistics_once():
    model = create_model("test_cnn", in_chans=1).train()
    twin = copy.deepcopy(model)
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    loss_fn = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731
    sam_step(model, make_optimizer(model.parameters(), TrainConfig(lr=0.1)), loss_fn, x, y, 2.0, True, False)
    with torch.no_grad():
        twin(x)  # one pass at the unperturbed weights
    bn, ref = model.features[0][2], twin.features[0][2]
    assert torch.allclose(bn.running_mean, ref.running_mean) and torch.allclose(bn.running_var, ref.running_var)
    assert bn.momentum == 0.1


def test_frozen_bn_stats_keeps_running_statistics():
    model = create_model("test_cnn", in_chans=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with frozen_bn_stats(model):
        model(torch.rand(4, 1, 16, 16))
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_smoothed_cross_entropy():
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert torch.allclose(smoothed_cross_entropy(logits, y, 0.0), F.cross_entropy(logits, y))
    target = torch.full((6, 10), 0.1 / 9)
    target[torch.arange(6), y] = 0.9
    assert torch.allclose(smoothed_cross_entropy(logits, y, 0.1), -(target * logits.log_softmax(1)).sum(1).mean())


@pytest.mark.parametrize("bad", [{"rho": -1.0}, {"label_smoothing": 1.0}])
def test_validate(bad):
    with pytest.raises(TacreconError, match=next(iter(bad))):
        create_defense("ftsam", **bad)
