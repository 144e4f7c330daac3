"""FP: channel order by clean activation, the clean-accuracy pruning rule on held-out clean data,
and a mask that stays in place through the fine-tune."""

import pytest
import torch
from torch import nn

from tacrecon.data import load_dataset
from tacrecon.defenses import create_defense, holdout
from tacrecon.defenses.base import column_mask
from tacrecon.defenses.fp import choose_pruning, masked_accuracy, pruning_order
from tacrecon.errors import TacreconError
from tacrecon.models import create_model, latents_of
from tacrecon.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained():
    """A test_cnn trained 8 epochs on digits (about 80% accurate), and a 300-image clean set."""
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("test_cnn", in_chans=1)
    fit(model, data.train, TrainConfig(epochs=8, flip=False, crop_padding=0, progress=False),
        generator=torch.Generator().manual_seed(0))
    return model.eval(), data.train.subset(torch.arange(300))


def test_pruning_order_is_ascending_mean_activation():
    z = torch.tensor([[3.0, 0.0, 1.0, 5.0], [1.0, 0.2, 1.0, -5.0]])  # means 2, 0.1, 1, 0
    assert pruning_order(z).tolist() == [3, 1, 2, 0]


def toy_head():
    """Two classes decided by channel 2 alone; channels 0, 1, 3 carry nothing."""
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0, -1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    y = torch.tensor([0, 1, 0, 1])
    z = torch.zeros(4, 4)
    z[:, 2] = y * 2.0 - 1
    z[:, 0] = 1.0
    return head, z, y


def test_masked_accuracy_zeroes_the_pruned_columns():
    head, z, y = toy_head()
    assert masked_accuracy(z, y, head, torch.tensor([0, 1, 3])) == 1.0
    assert masked_accuracy(z, y, head, torch.tensor([2])) == 0.5


def test_choose_pruning_keeps_the_last_level_within_the_accuracy_rule():
    head, z, y = toy_head()
    n, curve = choose_pruning(z, y, head, torch.tensor([1, 3, 2, 0]), 1, acc_ratio=0.1)
    assert n == 2  # pruning channel 2 (the third) halves the accuracy: stop, keep two
    assert curve == [(0, 1.0), (1, 1.0), (2, 1.0), (3, 0.5)]
    n, curve = choose_pruning(z, y, head, torch.tensor([1, 3, 2, 0]), 2, acc_ratio=0.1)
    assert n == 2 and [k for k, _ in curve] == [0, 2, 4]
    n, _ = choose_pruning(z, y, head, torch.tensor([1, 3, 2, 0]), 1, acc_ratio=0.6)
    assert n == 4  # a 50% drop is tolerated


def test_column_mask():
    head = nn.Linear(5, 3)
    mask = column_mask(head, torch.tensor([1, 4]))
    assert mask.shape == (3, 5) and mask[:, [1, 4]].eq(0).all() and mask[:, [0, 2, 3]].eq(1).all()


def test_fit_prunes_the_least_active_channels_chosen_on_held_out_clean_data(trained):
    model, clean = trained
    fp = create_defense("fp", "smoke", acc_ratio=0.3).fit(model, clean, torch.Generator().manual_seed(0))
    # the same split the defense drew first from the generator
    train, val = holdout(clean, fp.val_fraction, torch.Generator().manual_seed(0))
    order = pruning_order(latents_of(model, train.x))
    n, curve = choose_pruning(latents_of(model, val.x), val.y, model.get_classifier(), order, 1, 0.3)
    assert fp.stats_["val_size"] == len(val) == 60
    assert 0 < n == fp.stats_["n_pruned"] < 16
    assert fp.pruned_.tolist() == order[:n].tolist()
    assert fp.stats_["sweep"] == curve
    assert (curve[0][1] - fp.stats_["val_acc_pruned"]) / curve[0][1] < 0.3


def test_mask_stays_applied_after_the_fine_tune(trained):
    model, clean = trained
    fp = create_defense("fp", "smoke", acc_ratio=0.3).fit(model, clean, torch.Generator().manual_seed(0))
    head = fp.model_.get_classifier()
    keep = torch.ones(16, dtype=torch.bool)
    keep[fp.pruned_] = False
    assert head.weight[:, fp.pruned_].eq(0).all()
    assert not torch.equal(head.weight[:, keep], model.get_classifier().weight[:, keep])  # fine-tuned
    assert set(fp.model_.state_dict()) == set(model.state_dict())  # the mask is made permanent
    assert isinstance(head.weight, nn.Parameter)


@pytest.mark.parametrize("bad", [{"acc_ratio": 0.0}, {"once_prune_ratio": 1.5}, {"val_fraction": 1.0}])
def test_validate(bad):
    with pytest.raises(TacreconError, match=next(iter(bad))):
        create_defense("fp", **bad)
