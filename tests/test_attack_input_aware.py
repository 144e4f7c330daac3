"""Input-Aware: generator shapes, its two losses, state round-trip and a short co-training."""

import pytest
import torch

from tacrecon.attacks import create_attack
from tacrecon.attacks.generators import EncoderDecoder, diversity_loss
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.recipes import build_model, default_train_config, model_kwargs


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(data, **kw):
    attack = create_attack("input_aware", generator_width=4, **kw)
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


@pytest.mark.parametrize("size", [16, 32, 64, 20])
def test_generator_keeps_the_image_size_and_bounds_its_output(size):
    net = EncoderDecoder(3, 1, width=4).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, size, size)
    assert float(out.abs().max()) < 1


def test_pattern_and_mask_are_in_the_unit_interval(digits):
    attack = ready(digits)
    x = digits.test.x[:8]
    with torch.no_grad():
        pattern, mask = attack.pattern(x), attack.mask(x)
    assert pattern.shape == x.shape and mask.shape == (8, 1, 16, 16)
    for t in (pattern, mask):
        assert float(t.min()) >= 0 and float(t.max()) <= 1


def test_mask_density_loss_falls_as_the_mask_gets_sparse(digits):
    attack = ready(digits, lambda_div=0.0)
    x = digits.train.x[:64]
    net = attack.mask_net_.train()
    before = float(attack.mask_loss(x).detach())
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        attack.mask_loss(x).backward()
        opt.step()
    after = float(attack.mask_loss(x).detach())
    assert before > 0 and after < 0.5 * before


def test_mask_stage_diversity_is_measured_on_normalised_images(digits):
    # BackdoorBench feeds normalised images: the image distance is over the per-channel std
    attack = ready(digits, lambda_norm=0.0)
    x = digits.train.x[:16]
    z = x / torch.tensor(digits.std).view(1, -1, 1, 1)
    with torch.no_grad():
        m = attack.mask(x)
        expected = diversity_loss(z, z.roll(1, 0), m, m.roll(1, 0))
        on_pixels = diversity_loss(x, x.roll(1, 0), m, m.roll(1, 0))
        assert float(attack.mask_loss(x)) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 1.5 * float(on_pixels)  # digits' std is well under 1
    assert attack.revision == 2


def test_diversity_loss_is_positive_and_small_for_diverse_outputs():
    x1, x2 = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    same = diversity_loss(x1, x2, x1, x1)  # identical outputs for different inputs: huge
    diverse = diversity_loss(x1, x2, x1, x2)  # outputs as far apart as the inputs: 1
    assert float(diverse) == pytest.approx(1.0) and float(same) > 1e3
    out = torch.rand(4, 1, 8, 8, requires_grad=True)
    diversity_loss(x1, x2, out, out.detach()).backward()  # equal outputs: finite gradient
    assert bool(torch.isfinite(out.grad).all())


def test_state_dict_round_trip_gives_the_same_trigger(digits):
    attack = ready(digits)
    other = create_attack("input_aware", generator_width=4)
    other.bind(digits.num_classes, digits.input_shape)
    x = digits.test.x[:16]
    assert not torch.equal(other(x), attack(x))
    other.load_state_dict(attack.state_dict())
    assert torch.equal(other(x), attack(x))


@pytest.mark.parametrize("rate, mode", [(0.1, "all2one"), (0.6, "all2all")])  # 0.6: too few to cross
def test_short_cotraining_poisons_the_fixed_index_set(rate, mode, digits):
    attack = ready(digits, rate=rate, label_mode=mode, mask_epochs=1)
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    cfg = default_train_config("digits", epochs=1, batch_size=128, progress=False)
    before = {k: v.clone() for k, v in attack.state_dict().items()}
    idx = attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    assert idx.numel() == round(rate * len(digits.train)) and idx.unique().numel() == idx.numel()
    assert bool((attack.label_map()(digits.train.y[idx]) != digits.train.y[idx]).all())
    after = attack.state_dict()
    for net in ("pattern.", "mask."):  # both generators trained
        assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(net))
    assert not model.training and not attack.pattern_net_.training
    again = ready(digits, rate=rate, label_mode=mode, mask_epochs=1)
    model2 = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    assert torch.equal(again.train(model2, digits.train, cfg, torch.Generator().manual_seed(0)), idx)


def test_bad_hyperparameters():
    with pytest.raises(TacreconError, match="mask_density"):
        create_attack("input_aware", mask_density=0.0)
    with pytest.raises(TacreconError, match="generator_width"):
        create_attack("input_aware", generator_width=0)
