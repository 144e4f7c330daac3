"""The defender's clean set and the checks made before a scan (tacrecon/scan.py)."""

import pytest
import torch

from tacrecon.data import clean_subset
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError


def split(n=100, classes=5):
    return Split(torch.rand(n, 1, 4, 4), torch.arange(n) % classes)


def test_the_clean_set_never_holds_a_poisoned_image():
    train = split()
    poisoned = torch.arange(0, 100, 3)
    clean = clean_subset(train, None, 60, 0, poisoned)
    picked = {tuple(x.flatten().tolist()) for x in clean.x}
    assert len(clean) == 60 and not picked & {tuple(train.x[i].flatten().tolist()) for i in poisoned.tolist()}
    assert torch.equal(clean_subset(train, None, 60, 0, poisoned).x, clean.x)  # the seed fixes the draw
    assert not torch.equal(clean_subset(train, None, 60, 1, poisoned).x, clean.x)


def test_the_clean_set_size():
    train = split()
    assert len(clean_subset(train, 0.2, None, 0)) == 20 and len(clean_subset(train, None, None, 0)) == 5
    with pytest.raises(TacreconError, match="must hold 1..66 samples, got 67"):
        clean_subset(train, None, 67, 0, torch.arange(0, 100, 3))
    with pytest.raises(TacreconError, match="clean fraction must be in"):
        clean_subset(train, float("nan"), None, 0)
