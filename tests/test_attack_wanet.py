"""WaNet: the warp grid, the warp itself, its saved state and the per-batch noise mode."""

import pytest
import torch

from tacrecon.attacks import create_attack
from tacrecon.attacks.wanet import identity_grid
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.recipes import build_model, default_train_config, model_kwargs


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(data, seed=0, **kw):
    attack = create_attack("wanet", **kw)
    attack.setup(data, torch.Generator().manual_seed(seed))
    return attack


def test_identity_grid_reproduces_the_input(digits):
    x = digits.test.x[:32]
    grid = identity_grid(*x.shape[-2:])
    assert grid.shape == (1, 16, 16, 2) and float(grid.min()) == -1 and float(grid.max()) == 1
    torch.testing.assert_close(ready(digits, s=0.0).apply(x)[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("rescale", [1.0, 2.0])
def test_backdoor_grid_stays_in_the_image(digits, rescale):
    grid = ready(digits, grid_rescale=rescale).grid_
    assert grid.shape == (1, 16, 16, 2)
    assert float(grid.min()) >= -1 and float(grid.max()) <= 1
    assert float(grid.abs().max()) == 1  # the corners map onto the clamp


def test_warp_is_small_deterministic_and_seeded(digits):
    x = digits.test.x[:64]
    attack = ready(digits)
    out = attack(x)
    assert 0 < float((out - x).abs().mean()) < 0.05  # digits: mean |x| is 0.3
    assert torch.equal(out, attack(x))
    assert not torch.equal(out, ready(digits, seed=1)(x))
    stronger = ready(digits, s=2.0)(x)
    assert float((stronger - x).abs().mean()) > float((out - x).abs().mean())


def test_state_round_trip(digits):
    attack = ready(digits, seed=3)
    again = create_attack("wanet")
    again.bind(digits.num_classes, digits.input_shape)
    again.load_state_dict(attack.state_dict())
    x = digits.test.x[:16]
    assert torch.equal(again(x), attack(x))


def test_noise_mode_keeps_labels_and_warps_its_share(digits):
    attack = ready(digits, rate=0.1, cross_ratio=2.0, target=0)
    x, y = digits.train.x[:200], digits.train.y[:200]
    counts = []
    for seed in range(20):
        out, labels = attack.noise_mode(x, y, torch.Generator().manual_seed(seed))
        assert torch.equal(labels, y) and torch.equal(x, digits.train.x[:200])
        changed = (out != x).flatten(1).any(1)
        assert not bool(changed[y == 0].any())  # all-to-one: the target class (and poison) is skipped
        assert float(out.min()) >= 0 and float(out.max()) <= 1
        counts.append(int(changed.sum()))
    assert set(counts) == {40}  # cross_ratio * rate * 200
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(attack.noise_mode(x, y, g1)[0], attack.noise_mode(x, y, g2)[0])


def test_noise_mode_count_rounds_at_random(digits):
    attack = ready(digits, rate=0.1, cross_ratio=2.0)
    x, y = digits.train.x[:64], digits.train.y[:64]  # 12.8 expected per batch
    g = torch.Generator().manual_seed(0)
    counts = [int((attack.noise_mode(x, y, g)[0] != x).flatten(1).any(1).sum()) for _ in range(100)]
    assert set(counts) == {12, 13} and 12.5 <= sum(counts) / len(counts) <= 13.1


def test_train_returns_the_fixed_poisoned_set(digits):
    attack = ready(digits, rate=0.1)
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    cfg = default_train_config("digits", epochs=1, batch_size=128, progress=False)
    idx = attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    expected = attack.poison_index(digits.train.y, torch.Generator().manual_seed(0))
    assert torch.equal(idx, expected)


def test_bad_config_and_input(digits):
    for bad in ({"k": 0}, {"s": -1.0}, {"grid_rescale": 0.0}, {"cross_ratio": -1.0}):
        with pytest.raises(TacreconError):
            create_attack("wanet", **bad)
    with pytest.raises(TacreconError, match="setup"):
        create_attack("wanet")(digits.test.x[:2])
    with pytest.raises(TacreconError, match="warp"):
        ready(digits)(torch.rand(2, 1, 8, 8))
