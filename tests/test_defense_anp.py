"""ANP: the noisy BN through functional_call, noise and mask bounds, pruning by threshold."""

import pytest
import torch
from torch import nn

from tacrecon.data import load_dataset
from tacrecon.data.split import Split
from tacrecon.defenses import create_defense
from tacrecon.defenses.anp import ANP, NeuronPerturbation, noise_step, prune
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("test_cnn", in_chans=1).eval()


def batch(digits, n=64):
    return digits.train.x[:n], digits.train.y[:n]


def test_unperturbed_call_is_the_model(model, digits):
    x, _ = batch(digits)
    pert = NeuronPerturbation(model)
    assert pert.names == ["features.0.2", "features.1.2"]
    with torch.no_grad():
        assert torch.allclose(pert(x, perturbed=False), model(x), atol=1e-6)
        assert torch.allclose(pert(x, perturbed=True), model(x), atol=1e-6)  # noise starts at 0


def test_noise_is_multiplicative_on_weight_and_bias(model, digits):
    x, _ = batch(digits)
    pert = NeuronPerturbation(model)
    with torch.no_grad():
        for m, dw, db in zip(pert.masks, pert.noise, pert.noise_bias):
            m.fill_(0.5), dw.fill_(0.25), db.fill_(-0.5)
        manual = create_model("test_cnn", in_chans=1).eval()
        manual.load_state_dict(model.state_dict())
        for name in pert.names:
            bn = manual.get_submodule(name)
            bn.weight.mul_(0.75), bn.bias.mul_(0.5)
        assert torch.allclose(pert(x, perturbed=True), manual(x), atol=1e-5)


@pytest.mark.parametrize("project", [False, True])
def test_noise_bounds(model, digits, project):
    x, y = batch(digits)
    pert = NeuronPerturbation(model)
    eps = 0.4
    pert.reset_noise(eps, torch.Generator().manual_seed(0))
    for p in pert.noise + pert.noise_bias:
        assert float(p.detach().abs().max()) <= eps
    noise_step(pert, x, y, eps, steps=1, project=project)
    largest = max(float(p.detach().abs().max()) for p in pert.noise + pert.noise_bias)
    assert largest <= (eps if project else 2 * eps) + 1e-6
    if not project:
        assert largest > eps  # the published code's step leaves the eps-ball


def test_noise_step_raises_the_loss(model, digits):
    x, y = batch(digits)
    pert = NeuronPerturbation(model)
    with torch.no_grad():
        before = nn.functional.cross_entropy(pert(x, perturbed=True), y)
    noise_step(pert, x, y, 0.4, steps=1, project=True)
    with torch.no_grad():
        assert nn.functional.cross_entropy(pert(x, perturbed=True), y) > before


def test_masks_stay_in_unit_interval_and_move(model, digits):
    anp = ANP(iterations=20, batch_size=32, mask_lr=0.5)
    anp.stats_ = {}
    masks = anp.learn_masks(model, digits.train.subset(torch.arange(256)), torch.Generator().manual_seed(0))
    values = torch.cat(list(masks.values()))
    assert values.shape == (8 + 16,)
    assert float(values.min()) >= 0 and float(values.max()) <= 1
    assert float(values.min()) < 1  # learning moved some mask
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_prune_threshold_zero_changes_nothing(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {"features.0.2": torch.zeros(8), "features.1.2": torch.linspace(0, 1, 16)}
    assert prune(model, masks, 0.0) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_prune_zeroes_the_weight_of_low_masks_only(model):
    bias = model.features[1][2].bias.clone()
    masks = {"features.0.2": torch.ones(8), "features.1.2": torch.linspace(0, 1, 16)}
    count = prune(model, masks, 0.2)
    low = masks["features.1.2"] < 0.2
    assert count == int(low.sum()) == 3  # 0, 1/15, 2/15
    weight = model.features[1][2].weight
    assert torch.all(weight[low] == 0) and torch.all(weight[~low] != 0)
    assert torch.equal(model.features[1][2].bias, bias)  # ANP keeps the bias
    assert torch.all(model.features[0][2].weight != 0)


def test_threshold_chosen_on_held_out_clean_accuracy(model, digits):
    clean = digits.train.subset(torch.arange(300))
    anp = create_defense("anp", "smoke", pruning_step=0.1).fit(model, clean, torch.Generator().manual_seed(0))
    sweep = anp.stats_["sweep"]
    assert [row["threshold"] for row in sweep] == pytest.approx([0.1 * i for i in range(10)])
    assert sweep[0]["pruned"] == 0
    base = sweep[0]["val_acc"]
    ok = [row["threshold"] for row in sweep if (base - row["val_acc"]) / base < anp.acc_ratio]
    assert anp.stats_["threshold"] == max(ok)


def test_anp_errors():
    clean = Split(torch.rand(20, 3, 8, 8), torch.zeros(20, dtype=torch.long))
    with pytest.raises(TacreconError, match="BatchNorm2d"):
        ANP(iterations=1).fit(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 2)), clean)
    with pytest.raises(TacreconError, match="alpha"):
        ANP(alpha=2.0).validate()
    with pytest.raises(TacreconError, match="pruning_max"):
        ANP(pruning_step=0).validate()
