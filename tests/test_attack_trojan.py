"""TrojanNN: the mask, the unit choice, the trigger optimisation and the saved state."""

import pytest
import torch

from tacrecon.attacks import create_attack
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.recipes import build_model, default_train_config, model_kwargs
from tacrecon.train import fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def reference(digits):
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    fit(model, digits.train, default_train_config("digits", epochs=2, progress=False),
        generator=torch.Generator().manual_seed(0))
    return model


def ready(data, **kw):
    attack = create_attack("trojan", **kw)
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


def test_mask_is_a_square_in_the_bottom_right_quadrant(digits):
    mask = ready(digits).mask_[0]  # 16 x 16, side 4, centred at (12, 12)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert mask.sum() == 16 and rows.unique().tolist() == [10, 11, 12, 13] == cols.unique().tolist()
    assert ready(digits, mask_size=1.0).mask_.sum() == 256


def test_apply_changes_pixels_only_inside_the_mask(digits):
    attack = ready(digits)
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    changed = (attack(x) != x).any(0).any(0)
    assert torch.equal(changed, attack.mask_[0].bool())


def test_units_are_the_most_connected_ones(digits, reference):
    attack = ready(digits, num_neurons=3, iters=0)
    weight = reference.get_classifier().weight.detach()
    attack.learn_trigger(reference, digits.train.x[:8])
    assert set(attack.neurons_.tolist()) == set(weight.abs().sum(0).argsort(descending=True)[:3].tolist())


def test_optimisation_raises_the_chosen_units(digits, reference):
    attack = ready(digits, eps=1.0, iters=30)
    images = digits.train.x[:64]
    start = attack.pattern_.clone()
    attack.learn_trigger(reference, images)
    with torch.no_grad():
        before = reference.latent(ready(digits)(images))[:, attack.neurons_].mean()
        after = reference.latent(attack(images))[:, attack.neurons_].mean()
    assert after > before + 0.1
    outside = attack.mask_.expand_as(start) == 0
    assert not torch.equal(attack.pattern_, start) and bool((attack.pattern_[outside] == 0).all())


def test_projection_keeps_the_trigger_near_white(digits, reference):
    attack = ready(digits, eps=0.3, iters=30)
    attack.learn_trigger(reference, digits.train.x[:32])
    inside = attack.pattern_[attack.mask_.expand_as(attack.pattern_) == 1]
    assert float(inside.min()) >= 0.7 - 1e-6 and float(inside.max()) <= 1


def test_state_round_trip(digits, reference):
    attack = ready(digits, iters=10, eps=1.0)
    attack.learn_trigger(reference, digits.train.x[:16])
    again = create_attack("trojan", iters=10, eps=1.0)
    again.bind(digits.num_classes, digits.input_shape)
    again.load_state_dict(attack.state_dict())
    x = digits.test.x[:16]
    assert torch.equal(again(x), attack(x))
    assert not torch.equal(again(x), ready(digits)(x))  # the learned trigger, not the initial one


def test_train_learns_a_trigger_then_poisons(digits):
    attack = ready(digits, reference_epochs=1, iters=5)
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    cfg = default_train_config("digits", epochs=1, batch_size=128, progress=False)
    idx = attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    assert idx.numel() == round(0.1 * len(digits.train)) and attack.neurons_.numel() == 2


def test_bad_config(digits, reference):
    for bad in ({"num_neurons": 0}, {"mask_size": 0.0}, {"mask_size": 1.5}, {"step": 0.0},
                {"eps": -0.1}, {"iters": -1}, {"reference_epochs": -1}):
        with pytest.raises(TacreconError):
            create_attack("trojan", **bad)
    with pytest.raises(TacreconError, match="latent width"):
        ready(digits, num_neurons=17).learn_trigger(reference, digits.train.x[:4])
