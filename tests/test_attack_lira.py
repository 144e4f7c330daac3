"""LIRA: the perturbation bound, state round-trip, and a short two-stage training."""

import pytest
import torch

from tacrecon.attacks import create_attack
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.recipes import build_model, default_train_config, model_kwargs


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(data, **kw):
    attack = create_attack("lira", generator_width=4, **kw)
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


@pytest.mark.parametrize("eps", [0.01, 8 / 255, 0.5])
def test_perturbation_is_bounded_by_eps(eps, digits):
    attack = ready(digits, eps=eps)
    x = digits.test.x[:32]
    out = attack(x)
    gap = (out - x).abs()
    assert float(gap.max()) <= eps + 1e-6 and float(gap.max()) > 0
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_state_dict_round_trip_gives_the_same_trigger(digits):
    attack = ready(digits)
    other = create_attack("lira", generator_width=4)
    other.bind(digits.num_classes, digits.input_shape)
    x = digits.test.x[:16]
    assert not torch.equal(other(x), attack(x))
    other.load_state_dict(attack.state_dict())
    assert torch.equal(other(x), attack(x))


@pytest.mark.parametrize("trigger_epochs", [1, 0])
def test_short_training_poisons_the_fixed_index_set(trigger_epochs, digits):
    attack = ready(digits, rate=0.1, trigger_epochs=trigger_epochs)
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    cfg = default_train_config("digits", epochs=2, batch_size=128, progress=False)
    before = {k: v.clone() for k, v in attack.state_dict().items()}
    idx = attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    assert idx.numel() == round(0.1 * len(digits.train)) and idx.unique().numel() == idx.numel()
    assert bool((digits.train.y[idx] != 0).all())
    after = attack.state_dict()
    moved = any(not torch.equal(v, after[k]) for k, v in before.items())
    assert moved == (trigger_epochs > 0)  # stage 2 alone keeps T fixed
    assert not model.training and not attack.noise_net_.training


def test_bad_hyperparameters():
    for bad in ({"eps": 0.0}, {"eps": 1.5}, {"alpha": 1.0}, {"trigger_epochs": -1}):
        with pytest.raises(TacreconError):
            create_attack("lira", **bad)
