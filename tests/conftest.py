"""Fixtures shared by the tests of TAC and its estimator: digits, two planted models, a shortcut model."""

import pytest
import torch
from torch import nn

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import Attack, create_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.data.split import Split
from tacrecon.defenses.tac import TAC


def ready_attack(name: str, data, **kw) -> Attack:
    """The attack ``name`` (hyperparameters ``kw``) set up on ``data`` with seed 0."""
    attack = create_attack(name, **kw)
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


def clean_label_training_set(attack: Attack, train: Split, rate: float, target: int) -> tuple[Split, torch.Tensor]:
    """``attack``'s training set (seed 1), checked as a clean-label one: round(rate * N) poisoned
    indices, all of class ``target``, labels kept, and no image changed outside them."""
    poisoned, idx = attack.training_set(train, torch.Generator().manual_seed(1))
    assert idx.numel() == round(rate * len(train)) and bool((train.y[idx] == target).all())
    assert torch.equal(poisoned.y, train.y)
    changed = torch.nonzero((poisoned.x != train.x).flatten(1).any(1)).flatten()
    assert set(changed.tolist()) <= set(idx.tolist())
    return poisoned, idx


def make_tac(**flat) -> TAC:
    """TAC from flat hyperparameter names, as ``--set`` takes them."""
    return TAC.from_dict(flat)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def planted(tmp_path_factory, digits):
    """A BadNets (target 0) and a clean resnet_small on digits, tuning seed 100, and clean sets."""
    root = tmp_path_factory.mktemp("art")
    out = {}
    for name in ("badnets", "none"):
        run_attack(name, "digits", "resnet_small", root / name, seed=100, train={"progress": False})
        art = load_artifact(root / name)
        out[name] = (art, clean_subset(digits.train, 0.2, None, 100, art.poison_index))
    out["root"] = root
    return out


@pytest.fixture
def shortcut_model():
    """A one-layer model whose class 0 has a shortcut unit that a small latent shift uses, except
    for 5% of the samples that sit far on its wrong side: the plain QP (the max over samples) finds
    nothing, the robust one (q 0.9) finds class 0. Latents are the inputs: (400, 1, 1, 30)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 30, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 6))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(6, 30, generator=g))
        model[1].weight[:, 0] = 0
        model[1].weight[0, 0] = 20.0
        model[1].bias.zero_()
    z[:, 0] = 0
    z[:20, 0] = -4.0
    x = z.reshape(400, 1, 1, 30)
    return model, Split(x, model(x).argmax(1).detach())
