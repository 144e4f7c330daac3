"""Metrics on hand-made predictions."""

import math

import pytest
import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.metrics import (
    Backdoor,
    accuracy,
    all2all,
    all2one,
    attack_rates,
    backdoor_rates,
    der,
    per_backdoor_text,
    predict,
)


class Lookup(nn.Module):
    """Predicts the class stored in pixel [0, 0, 0] (as an integer), or class 0 if the image is triggered."""

    def forward(self, x):
        cls = x[:, 0, 0, 0].round().long()
        cls = torch.where(x[:, 0, 1, 1] > 0.5, torch.zeros_like(cls), cls)
        return nn.functional.one_hot(cls, 4).float()


def split_of(labels, preds):
    x = torch.zeros(len(labels), 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float)
    return Split(x, torch.tensor(labels))


def trigger(x):
    x = x.clone()
    x[:, 0, 1, 1] = 1.0
    return x


def test_accuracy_and_predict():
    data = split_of([0, 1, 2, 3], [0, 1, 1, 3])
    assert accuracy(Lookup(), data) == 0.75
    assert predict(Lookup(), data.x, batch_size=3).tolist() == [0, 1, 1, 3]


def test_asr_all2one_excludes_target_class():
    data = split_of([0, 1, 2, 3, 3], [0, 1, 2, 3, 3])
    asr, ra = attack_rates(Lookup(), data, trigger, all2one(0))
    assert asr == 1.0 and ra == 0.0
    asr, ra = attack_rates(Lookup(), data, lambda x: x, all2one(0))
    assert asr == 0.0 and ra == 1.0


def test_asr_all2all_uses_label_map():
    data = split_of([0, 1, 2, 3], [0, 1, 2, 3])
    assert all2all(4)(torch.tensor([0, 3])).tolist() == [1, 0]
    asr, ra = attack_rates(Lookup(), data, trigger, all2all(4))
    assert asr == 0.25  # only label 3 -> 0 matches what the trigger does
    assert ra == 0.25  # the image of class 0 is still called 0


def test_asr_nan_when_nothing_eligible():
    asr, ra = attack_rates(Lookup(), split_of([0, 0], [0, 0]), trigger, all2one(0))
    assert math.isnan(asr) and math.isnan(ra)


def test_backdoor_rates_gives_each_and_the_worst():
    data = split_of([0, 1, 2, 3], [0, 1, 2, 3])
    doors = [Backdoor("to0", trigger, all2one(0), 0), Backdoor("to2", trigger, all2one(2), 2),
             Backdoor("next", trigger, all2all(4), None)]
    out = backdoor_rates(Lookup(), data, doors)
    # the trigger sends everything to 0: "to0" fully works, "to2" not at all, "next" on label 3 only
    assert out["asr_per_backdoor"] == {"to0": 1.0, "to2": 0.0, "next": 0.25}
    assert out["ra_per_backdoor"] == {"to0": 0.0, "to2": pytest.approx(1 / 3), "next": 0.25}
    assert out["asr"] == 1.0 and out["ra"] == 0.0  # the worst of each
    only_target = split_of([0, 0], [0, 0])  # "to0" has nothing to measure: it counts in neither
    out = backdoor_rates(Lookup(), only_target, doors[:2])
    assert math.isnan(out["asr_per_backdoor"]["to0"]) and out["asr"] == 0.0  # "to2"'s
    assert backdoor_rates(Lookup(), data, []) == {"asr": None, "ra": None}


def test_per_backdoor_text_names_each_backdoor_when_there_are_several():
    before = {"asr": 0.95, "asr_per_backdoor": {"badnets->1": 0.95, "blended->7": 0.9}}
    after = {"asr": 0.3, "asr_per_backdoor": {"badnets->1": 0.3, "blended->7": 0.01}}
    assert per_backdoor_text(before) == " (ASR badnets->1 95.0%, blended->7 90.0%)"
    assert per_backdoor_text(before, after) == " (ASR badnets->1 95.0% -> 30.0%, blended->7 90.0% -> 1.0%)"
    assert per_backdoor_text({"asr": 0.9, "asr_per_backdoor": {"badnets": 0.9}}) == ""  # the ASR says it all
    assert per_backdoor_text({"acc": 0.9}) == per_backdoor_text({"asr": None}, {}) == ""


@pytest.mark.parametrize("before,after,expected", [
    ((0.9, 1.0), (0.9, 0.0), 1.0),    # ASR removed, ACC kept
    ((0.9, 1.0), (0.8, 0.0), 0.95),   # costs 10 points of ACC
    ((0.9, 1.0), (0.9, 1.0), 0.5),    # nothing changed
    ((0.9, 0.5), (0.95, 0.7), 0.5),   # ASR up and ACC up count as 0
    ((0.9, 1.0), (0.1, 1.0), 0.1),    # destroyed the model, kept the backdoor
])
def test_der(before, after, expected):
    assert der(before[0], after[0], before[1], after[1]) == pytest.approx(expected)
