"""The TAC-aware attack: its configuration, its hiding term, and one short training run (digits)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import create_attack
from tacrecon.attacks.tac_aware import hiding_term
from tacrecon.errors import TacreconError
from tacrecon.qp import solve_latent_qp
from tacrecon.train import TrainConfig


def test_config_reads_back_and_delegates_to_the_backdoor(digits):
    attack = create_attack("tac_aware", attack={"name": "blended", "alpha": 0.1}, target=3, rate=0.05)
    assert create_attack("tac_aware", **attack.to_dict()).to_dict() == attack.to_dict()
    assert (attack.base_.name, attack.base_.target, attack.base_.rate, attack.base_.alpha) == ("blended", 3, 0.05, 0.1)
    attack.setup(digits, torch.Generator().manual_seed(0))
    x = digits.test.x[:8]
    assert torch.equal(attack(x), attack.base_(x))
    assert [b.target for b in attack.backdoors()] == [3]
    assert not attack.clean_label and create_attack("tac_aware", attack={"name": "sig"}).clean_label


@pytest.mark.parametrize("config,message", [
    ({"attack": {"name": "multi"}}, "multi, not a backdoor of its own"),
    ({"attack": {"name": "wanet"}}, "wanet trains its own way"),
    ({"attack": {"name": "badnets", "target": 2}}, "gives target"),
    ({"attack": {"name": "badnets", "patch_size": -1}}, "tac_aware: attack badnets"),
    ({"label_mode": "all2all"}, "label_mode must be all2one"),
    ({"weight": -1.0}, "weight >= 0"),
    ({"band": -0.1}, "band >= 0"),
    ({"quantiles": [1.5]}, r"quantiles must list values in \(0, 1\]"),
])
def test_bad_configs(config, message):
    with pytest.raises(TacreconError, match=message):
        create_attack("tac_aware", **config)


def head_and_latents(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(80, 6, generator=g).relu()
    head = nn.Linear(6, 5)
    with torch.no_grad():
        head.weight.copy_(torch.randn(5, 6, generator=g))
        head.bias.zero_()
        head.bias[2] = 4.0  # class 2 is cheap to reach: the target stands out, as a backdoor's does
    return z, head


@pytest.mark.parametrize("quantile", [None, 0.9])
def test_hiding_term_is_the_log_distance_to_the_median_and_descends(quantile):
    z, head = head_and_latents()
    norms = solve_latent_qp(z, head.weight.detach(), head.bias.detach(), quantile=quantile).norms
    others = torch.cat([norms[:2], norms[3:]])
    term = hiding_term(z, head, 2, quantile, 1.0).detach()
    assert float(term) == pytest.approx(abs(float((norms[2] / others.median()).log())), rel=1e-5)
    assert norms[2] < others.min()
    # inside the band the term is 0; outside it, the distance less the band
    assert float(hiding_term(z, head, 2, quantile, 1.0, band=10.0).detach()) == 0.0
    banded = float(hiding_term(z, head, 2, quantile, 1.0, band=0.01).detach())
    assert banded == pytest.approx(float(term) - math.log1p(0.01), abs=1e-5)
    opt = torch.optim.SGD(head.parameters(), lr=0.2)
    for _ in range(30):
        opt.zero_grad()
        hiding_term(z, head, 2, quantile, 1.0).backward()
        opt.step()
    assert float(hiding_term(z, head, 2, quantile, 1.0).detach()) < 0.5 * float(term)


class Latent(nn.Module):
    """A linear latent and head: what the attack's loss needs of a classifier."""

    def __init__(self, z_dim=6, classes=5):
        super().__init__()
        self.body, self.head = nn.Linear(4, z_dim), nn.Linear(z_dim, classes)

    def latent(self, x):
        return self.body(x.flatten(1)).relu()

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.latent(x))


def test_loss_adds_the_term_on_rows_not_labelled_with_the_target():
    torch.manual_seed(0)
    model, x = Latent(), torch.rand(32, 1, 2, 2)
    y = torch.arange(32) % 5
    cfg = TrainConfig(label_smoothing=0.0)
    plain = F.cross_entropy(model(x), y)
    assert torch.allclose(create_attack("tac_aware", weight=0.0, target=2).loss(cfg)(model, x, y), plain)
    attack = create_attack("tac_aware", weight=2.0, target=2, quantiles=[1.0], band=0.05)
    rows = y != 2
    expected = plain + 2.0 * hiding_term(model.latent(x)[rows], model.head, 2, None, 1.0, 0.05)
    assert torch.allclose(attack.loss(cfg)(model, x, y), expected)


def test_training_makes_an_artifact_that_reads_back(tmp_path, digits):
    out = tmp_path / "art"
    record = run_attack("tac_aware", "digits", "resnet_small", out, seed=0,
                        config={"attack": {"name": "badnets"}, "target": 1, "weight": 1.0},
                        train={"epochs": 1, "batch_size": 128, "progress": False})
    art = load_artifact(out)
    assert record["attack"] == "tac_aware" and art.attack.base_.name == "badnets" and art.attack.target == 1
    assert torch.equal(art.attack(digits.test.x[:4]), art.attack.base_(digits.test.x[:4]))
    with pytest.raises(TacreconError, match="latent"):
        art.attack.train(nn.Linear(3, 3), digits.train, TrainConfig(epochs=1), torch.Generator())
