"""LC: target images made hard by PGD on a surrogate, stamped with the corner pattern, labels kept."""

import pytest
import torch
import torch.nn.functional as F
from conftest import clean_label_training_set, ready_attack

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import create_attack
from tacrecon.attacks.adversarial import pgd
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import attack_rates
from tacrecon.recipes import build_model, default_train_config, model_kwargs
from tacrecon.train import fit

FAST = {"surrogate_arch": "test_cnn", "surrogate_epochs": 1, "steps": 10, "step_size": 4 / 255}


def ready(data, **kw):
    return ready_attack("lc", data, **kw)


def test_defaults_are_backdoorbench_cifar10():
    a = create_attack("lc")
    assert a.clean_label and (a.rate, a.trigger, a.amplitude, a.steps) == (0.1, "all_corners", 1.0, 100)
    assert (a.eps, a.step_size) == (16 / 255, 1.5 / 255)


def test_test_trigger_is_the_corner_pattern_at_full_amplitude():
    attack = create_attack("lc")
    attack.bind(10, (3, 32, 32))
    x = torch.full((2, 3, 32, 32), 0.5)
    out = attack(x)
    top_left = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    for rows in (slice(0, 3), slice(29, 32)):
        assert torch.equal(out[:, :, rows, :3], top_left.expand(2, 3, 3, 3))
        assert torch.equal(out[:, :, rows, 29:], top_left.flip(1).expand(2, 3, 3, 3))  # mirrored on the right
    changed = (out != x).any(1)
    assert int(changed.sum()) == 2 * 36  # 4 corners x 9 pixels, nothing else
    one = create_attack("lc", trigger="bottom_right")
    one.bind(10, (3, 32, 32))
    assert int((one(x) != x).any(1).sum()) == 2 * 9


def test_apply_is_pure_and_keeps_shape_and_range(digits):
    attack = ready(digits)
    x = digits.test.x[:8].clone()
    out = attack(x)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(x, digits.test.x[:8])
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and torch.equal(out, attack(x))


def test_pgd_stays_in_its_ball_and_raises_the_loss(digits):
    model = build_model("test_cnn", model_kwargs("test_cnn", digits), seed=0)
    fit(model, digits.train, default_train_config("digits", epochs=3, progress=False))
    x, y = digits.train.x[:64], digits.train.y[:64]
    adv = pgd(model, x, y, 8 / 255, 2 / 255, 10)
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 0.1


def test_training_set_perturbs_target_images_only_and_keeps_labels(digits):
    attack = ready(digits, rate=0.08, target=3, **FAST)
    poisoned, idx = clean_label_training_set(attack, digits.train, 0.08, 3)
    train = digits.train
    off_trigger = attack.signs_[0] == 0  # pixels the pattern does not touch: only the PGD change
    diff = (poisoned.x[idx] - train.x[idx])[:, :, off_trigger]
    assert float(diff.abs().max()) <= attack.eps + 1e-6 and float(diff.abs().max()) > 0
    on = attack.signs_[0] != 0  # at amplitude 1 the pattern pixels are pure white or black
    assert torch.equal(poisoned.x[idx][:, :, on], attack(train.x[idx])[:, :, on])
    again, _ = ready(digits, rate=0.08, target=3, **FAST).training_set(train, torch.Generator().manual_seed(1))
    assert torch.equal(again.x, poisoned.x)  # the surrogate and PGD come from the seed


def test_reduced_amplitude_in_training_only(digits):
    attack = ready(digits, rate=0.08, amplitude=0.25, **FAST)
    poisoned, idx = attack.training_set(digits.train, torch.Generator().manual_seed(1))
    on = attack.signs_[0] != 0
    step = (poisoned.x[idx][:, :, on] - attack(digits.train.x[idx])[:, :, on]).abs()
    assert float(step.max()) > 0.5  # not the full pattern
    with pytest.raises(TacreconError, match="amplitude"):
        create_attack("lc", amplitude=0)


def test_artifact_round_trip_keeps_the_trigger(tmp_path, digits):
    config = {"rate": 0.08, **FAST}
    record = run_attack("lc", "digits", "test_cnn", tmp_path / "a", config=config,
                        train={"epochs": 1, "progress": False})
    art = load_artifact(tmp_path / "a")
    x = digits.test.x[:16]
    assert torch.equal(art.attack(x), ready(digits, **config)(x))
    assert bool((digits.train.y[art.poison_index] == 0).all()) and art.poison_index.numel() == record["poisoned"]


def test_bad_hyperparameters():
    for bad in ({"trigger": "top"}, {"steps": -1}, {"surrogate_epochs": 0}, {"eps": 2.0},
                {"label_mode": "all2all"}):
        with pytest.raises(TacreconError):
            create_attack("lc", **bad)


def upsampled(data: Dataset) -> Dataset:
    """Digits at 32x32 (nearest), so that the corner pattern keeps its 3x3 cells unresized."""
    def up(s: Split) -> Split:
        return Split(F.interpolate(s.x, size=(32, 32), mode="nearest"), s.y)

    return Dataset(data.name, up(data.train), up(data.test), data.classes, data.mean, data.std)


def test_lc_implants_a_backdoor_on_digits(digits):
    """Default PGD and trigger, a 4-epoch surrogate, the victim resnet_small (width 8) for 6
    epochs, all the digit-0 images poisoned. Measured: ASR 0.11 (a clean model of the same seed:
    0.00). At 16x16 the pattern shrinks to 4 white pixels on the black border, and ASR stays 0."""
    data = upsampled(digits)
    attack = ready(data, rate=0.1, surrogate_epochs=4)
    model = build_model("resnet_small", model_kwargs("resnet_small", data, width=8), seed=0)
    cfg = default_train_config("digits", epochs=6, batch_size=64, progress=False)
    attack.train(model, data.train, cfg, torch.Generator().manual_seed(0))
    asr, _ = attack_rates(model, data.test, attack, attack.label_map())
    assert asr > 0.06, f"ASR {asr:.3f}"
