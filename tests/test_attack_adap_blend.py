"""Adap-Blend: half the pattern's pieces per training image at alpha 0.15, covers, the whole pattern at test."""

import pytest
import torch
from conftest import ready_attack

from tacrecon.attacks import create_attack
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(data, **kw):
    return ready_attack("adap_blend", data, **kw)


def test_defaults_are_the_toolbox_cifar10_command():
    a = create_attack("adap_blend")
    assert (a.rate, a.cover_rate, a.alpha, a.test_alpha, a.pieces, a.mask_rate) == (0.003, 0.003, 0.15, 0.2, 16, 0.5)


def test_training_set_has_poisoned_and_cover_samples(digits):
    attack, train = ready(digits, rate=0.05, cover_rate=0.04, target=2), digits.train
    poisoned, idx = attack.training_set(train, torch.Generator().manual_seed(1))
    n = len(train)
    assert idx.numel() == round(0.05 * n) and bool((train.y[idx] != 2).all())
    assert bool((poisoned.y[idx] == 2).all())
    changed = (poisoned.x != train.x).flatten(1).any(1)
    relabelled = poisoned.y != train.y
    assert torch.equal(torch.nonzero(relabelled).flatten(), idx)
    covers = changed & ~relabelled
    assert int(covers.sum()) == round(0.04 * n)  # stamped, label kept
    assert bool(changed[idx].all())
    again, idx2 = attack.training_set(train, torch.Generator().manual_seed(1))
    assert torch.equal(again.x, poisoned.x) and torch.equal(idx2, idx)
    other, _ = attack.training_set(train, torch.Generator().manual_seed(2))
    assert not torch.equal(other.x, poisoned.x)


def test_each_training_image_shows_half_the_pieces_at_the_training_alpha(digits):
    attack = ready(digits)
    x = digits.train.x[:40]
    out = attack.stamp_train(x, torch.Generator().manual_seed(0))
    diff = (out - x)[:, 0]  # (N, 16, 16), one channel
    pieces = diff.reshape(40, 4, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(40, 16, 16)  # 4x4 grid of 4x4 pieces
    shown = pieces.abs().amax(-1) > 0
    assert bool((shown.sum(1) == 8).all())  # 16 pieces, mask rate 0.5
    assert shown.unique(dim=0).shape[0] > 30  # a fresh draw per image
    full = attack.pattern_[0] - x[:, 0]
    expected = 0.15 * full * attack.piece_masks(40, torch.Generator().manual_seed(0))[:, 0]
    torch.testing.assert_close(diff, expected)


def test_the_test_trigger_is_the_whole_pattern_at_0_2(digits):
    attack = ready(digits)
    x = digits.test.x[:8]
    torch.testing.assert_close(attack(x), 0.8 * x + 0.2 * attack.pattern_)
    train_like = attack.stamp_train(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(train_like, attack(x))


def test_pieces_split_any_side():
    attack = create_attack("adap_blend", pieces=9)
    attack.bind(10, (3, 32, 32))  # 32 is not a multiple of 3
    assert attack.piece_of_.unique().tolist() == list(range(9))
    m = attack.piece_masks(5, torch.Generator().manual_seed(0))
    assert m.shape == (5, 1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0}


def test_bad_hyperparameters():
    for bad in ({"pieces": 15}, {"mask_rate": 1.0}, {"alpha": 0.0}, {"test_alpha": 1.5}, {"cover_rate": -0.1},
                {"rate": 0.6, "cover_rate": 0.5}):
        with pytest.raises(TacreconError):
            create_attack("adap_blend", **bad)
