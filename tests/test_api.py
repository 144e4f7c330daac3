"""The Python API: scan, repair and defend a plain nn.Module with clean tensors; the input is untouched."""

import pytest
import torch
from torch import nn

import tacrecon
from tacrecon.errors import TacreconError
from tacrecon.metrics import attack_rates


class Wrapped(nn.Module):
    """A user's module: no tacrecon contract, the head two levels down."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_scan_repair_and_defend_a_plain_module(planted, digits):
    art, clean = planted["badnets"]
    model = Wrapped(art.model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    found = tacrecon.scan(model, clean.x, clean.y)
    assert isinstance(found, tacrecon.ScanResult) and found.backdoored and found.target == 0
    assert found.norms.shape == found.relative.shape == found.anomaly_index.shape == (10,)
    assert found.shifts.shape[0] == 10 and found.seconds > 0 and found.record()["target"] == 0
    assert found.pairwise is None and "pairwise_flagged" not in found.record()
    looked = tacrecon.scan(model, clean.x, clean.y, pairwise=True)  # the opt-in look: same verdict, pairs beside it
    assert looked.flagged == found.flagged and looked.pairwise.norms.shape == (10, 10)
    assert looked.record()["pairwise_flagged"] == [list(p) for p in looked.pairwise.flagged]
    repaired, record = tacrecon.repair(model, clean.x, clean.y)
    assert isinstance(repaired, Wrapped) and record["repaired"] and record["scores"]["target"] == 0
    assert attack_rates(repaired, digits.test, art.attack, art.attack.label_map())[0] <= 0.05
    defended, ft = tacrecon.defend("ft", model, clean.x, clean.y, budget="smoke")
    assert isinstance(defended, Wrapped) and ft["defense"] == "ft" and ft["target"] is None
    for k, v in model.state_dict().items():  # never modified, no hook left behind
        assert torch.equal(v, state[k]), k
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_api_errors_are_one_line(planted):
    art, clean = planted["badnets"]
    with pytest.raises(TacreconError, match=r"\[0, 1\]"):
        tacrecon.scan(art.model, clean.x * 255, clean.y)
    with pytest.raises(TacreconError, match="tensors"):
        tacrecon.scan(art.model, clean.x.numpy(), clean.y)
    with pytest.raises(TacreconError, match="unknown TAC key"):
        tacrecon.scan(art.model, clean.x, clean.y, treshold=3)
    with pytest.raises(TacreconError, match="cannot run on the clean images"):
        tacrecon.scan(Wrapped(nn.Sequential(nn.Flatten(), nn.Linear(3, 10))), clean.x, clean.y)
    broken = Wrapped(nn.Sequential(nn.Flatten(), nn.Linear(clean.x[0].numel(), 10)))
    with torch.no_grad():
        broken.inner[1].weight.fill_(float("nan"))
    with pytest.raises(TacreconError, match="NaN"):
        tacrecon.scan(broken, clean.x, clean.y)
