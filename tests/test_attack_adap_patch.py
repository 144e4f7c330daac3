"""Adap-Patch and its stamps: four weak training triggers in runs, two pasted test triggers, covers."""

import pytest
import torch

from tacrecon.attacks import create_attack
from tacrecon.attacks.stamps import STAMPS, stamp
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.metrics import attack_rates
from tacrecon.recipes import build_model, default_train_config, model_kwargs


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def bound(**kw):
    """Adap-Patch bound to 32x32 RGB images, where the stamps have the toolbox's exact geometry."""
    attack = create_attack("adap_patch", **kw)
    attack.bind(10, (3, 32, 32))
    return attack


def test_defaults_are_the_toolbox_cifar10_config():
    a = create_attack("adap_patch")
    assert (a.rate, a.cover_rate) == (0.003, 0.006)
    assert a.train_triggers == ("phoenix_corner", "firefox_corner", "badnet_patch4", "trojan_square")
    assert a.train_alphas == (0.5, 0.2, 0.5, 0.3)
    assert a.test_triggers == ("phoenix_corner2", "badnet_patch4") and a.test_alphas == (1.0, 1.0)


@pytest.mark.parametrize("name,pixels,rows,cols", [
    ("phoenix_corner", 25, (27, 31), (27, 31)), ("phoenix_corner2", 50, (27, 31), (0, 31)),
    ("firefox_corner", 137, (1, 13), (18, 30)), ("badnet_patch4", 36, (0, 31), (0, 31)),
    ("trojan_square", 64, (21, 28), (21, 28))])
def test_stamps_keep_the_trigger_files_geometry(name, pixels, rows, cols):
    mark, mask = stamp(name, 3, 32, 32, seed=0)
    assert mark.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert float(mark.min()) >= 0 and float(mark.max()) <= 1 and set(mask.unique().tolist()) == {0.0, 1.0}
    r, c = torch.nonzero(mask[0], as_tuple=True)
    assert int(mask.sum()) == pixels and (int(r.min()), int(r.max())) == rows and (int(c.min()), int(c.max())) == cols
    again, _ = stamp(name, 3, 32, 32, seed=0)
    assert torch.equal(mark, again)
    if name != "badnet_patch4":  # a logo: its colours come from the seed
        assert not torch.equal(mark, stamp(name, 3, 32, 32, seed=1)[0])


def test_badnet_patch4_is_the_toolbox_pattern():
    mark, _ = stamp("badnet_patch4", 1, 32, 32, seed=0)
    x = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert torch.equal(mark[0, :3, :3], x) and torch.equal(mark[0, :3, 29:], x.flip(1))
    assert torch.equal(mark[0, 29:, :3], x.flip(0)) and torch.equal(mark[0, 29:, 29:], x.flip(0).flip(1))
    small, small_mask = stamp("badnet_patch4", 1, 16, 16, seed=0)
    assert small.shape == (1, 16, 16) and set(small_mask.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(TacreconError, match="unknown stamp"):
        stamp("nope", 3, 32, 32, seed=0)


def test_training_triggers_come_in_runs_at_their_alphas():
    attack = bound()
    x = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = attack.stamp_train(x, torch.Generator())
    runs = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]  # sample i of 10 gets trigger i * 4 // 10
    for i, j in enumerate(runs):
        mark, mask = attack.train_marks_[j], attack.train_masks_[j]
        torch.testing.assert_close(out[i], x[i] + attack.train_alphas[j] * mask * (mark - x[i]))


def test_the_test_trigger_pastes_both_test_stamps():
    attack = bound()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = attack(x)
    phoenix, phoenix_mask = stamp("phoenix_corner2", 3, 32, 32, seed=0)
    x4, x4_mask = stamp("badnet_patch4", 3, 32, 32, seed=0)
    only_phoenix = (phoenix_mask - x4_mask).clamp(min=0).bool().expand(4, 3, 32, 32)
    x4_at = x4_mask.bool().expand(4, 3, 32, 32)
    assert torch.equal(out[x4_at], x4.expand(4, 3, 32, 32)[x4_at])  # pasted last, on top
    assert torch.equal(out[only_phoenix], phoenix.expand(4, 3, 32, 32)[only_phoenix])
    rest = ~(phoenix_mask.bool() | x4_mask.bool()).expand(4, 3, 32, 32)
    assert torch.equal(out[rest], x[rest])
    assert not torch.allclose(out, attack.stamp_train(x, torch.Generator()))  # no training image looks like it


def test_training_set_counts_and_labels(digits):
    attack = create_attack("adap_patch", rate=0.04, cover_rate=0.08, target=5)
    attack.setup(digits, torch.Generator().manual_seed(0))
    train = digits.train
    poisoned, idx = attack.training_set(train, torch.Generator().manual_seed(3))
    assert idx.numel() == round(0.04 * len(train)) and bool((poisoned.y[idx] == 5).all())
    relabelled = poisoned.y != train.y
    covers = (poisoned.x != train.x).flatten(1).any(1) & ~relabelled
    assert torch.equal(torch.nonzero(relabelled).flatten(), idx)
    assert int(covers.sum()) == round(0.08 * len(train))


def test_bad_hyperparameters():
    for bad in ({"train_alphas": [0.5]}, {"test_triggers": ["nope"], "test_alphas": [1.0]},
                {"test_triggers": [], "test_alphas": []}, {"train_alphas": [0.5, 0.2, 0.5, 0.0]}):
        with pytest.raises(TacreconError):
            create_attack("adap_patch", **bad)
    assert set(STAMPS) >= set(create_attack("adap_patch", test_triggers=["firefox_corner", "trojan_square"]).test_triggers)


def test_the_backdoor_implants_on_digits(digits):
    """Rate 0.1 for 8 epochs (6 were not enough on 16x16 digits, where the stamps shrink to a few pixels)."""
    attack = create_attack("adap_patch", rate=0.1)
    attack.setup(digits, torch.Generator().manual_seed(0))
    model = build_model("resnet_small", model_kwargs("resnet_small", digits, width=8), seed=0)
    cfg = default_train_config("digits", epochs=8, batch_size=64, progress=False)
    attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    asr, _ = attack_rates(model, digits.test, attack, attack.label_map())
    assert asr > 0.6, f"ASR {asr:.2f}"  # chance is 0.1; measured 0.97
