"""NC: the MAD flagging, the cost schedule, the unlearning set, and a planted BadNets trigger."""

import pytest
import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.data.split import Split
from tacrecon.defenses import create_defense
from tacrecon.defenses.nc import NC, CostSchedule, flag, squash, stamp
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


def test_mad_flagging_on_a_hand_made_vector():
    norms = torch.tensor([20.0, 22.0, 18.0, 21.0, 19.0, 20.0, 3.0, 24.0, 16.0, 40.0])
    # median 20; |l - median| = 0 2 2 1 1 0 17 4 4 20 -> median 2, MAD = 1.4826 * 2
    index, flagged = flag(norms)
    assert index[6].item() == pytest.approx(17 / (1.4826 * 2))
    assert index[9].item() == pytest.approx(-20 / (1.4826 * 2))  # above the median: never flagged
    assert index[8].item() == pytest.approx(4 / (1.4826 * 2))   # 1.35 < 2
    assert flagged == [6]
    assert flag(norms, threshold=1.0)[1] == [6, 8]  # most anomalous first
    assert flag(torch.full((10,), 5.0))[1] == []


def test_cost_schedule_up_down_and_early_stop():
    s = CostSchedule(1e-3, multiplier=2.0, patience=5, early_stop_patience=3)
    for _ in range(4):
        assert not s.update(True, 10.0)
    assert s.cost == 1e-3
    s.update(True, 10.0)
    assert s.cost == pytest.approx(2e-3) and s.up_flag
    for _ in range(5):
        s.update(False, 10.0)
    assert s.cost == pytest.approx(2e-3 / 2 ** 1.5) and s.down_flag
    # both flags set and the best norm has not improved for early_stop_patience epochs
    assert s.update(False, 10.0)


def test_squash_and_stamp_stay_in_the_unit_interval():
    raw = torch.tensor([-1e4, -1.0, 0.0, 1.0, 1e4])
    values = squash(raw)
    assert float(values.min()) >= 0 and float(values.max()) <= 1  # float32: 1 / (2 + 1e-7) == 0.5
    x = torch.rand(2, 3, 4, 4)
    mask, pattern = torch.zeros(1, 4, 4), torch.rand(3, 4, 4)
    mask[0, 1, 2] = 1
    out = stamp(x, mask, pattern)
    assert torch.equal(out[:, :, 1, 2], pattern[:, 1, 2].expand(2, 3))
    out[:, :, 1, 2] = x[:, :, 1, 2]
    assert torch.equal(out, x)


def test_unlearning_set_stamps_a_fifth_per_flagged_class_with_true_labels():
    clean = Split(torch.rand(50, 1, 4, 4), torch.arange(50) % 10)
    white = (torch.ones(1, 4, 4), torch.ones(1, 4, 4))  # stamping makes the image all ones
    black = (torch.ones(1, 4, 4), torch.zeros(1, 4, 4))
    data = NC(unlearning_ratio=0.2).unlearning_set(clean, {3: white, 7: black}, torch.Generator().manual_seed(0))
    assert len(data) == 40 + 10 + 10
    kept, ones, zeros = data.x[:40], data.x[40:50], data.x[50:]
    assert torch.all(ones == 1) and torch.all(zeros == 0)
    rest = sorted(set(range(50)) - {int(i) for i in (clean.x[:, None] == kept[None]).flatten(2).all(2).nonzero()[:, 0]})
    assert len(rest) == 10
    assert torch.equal(data.y[40:50], data.y[50:])  # the same images, once per flagged class
    assert sorted(data.y[40:50].tolist()) == sorted(clean.y[rest].tolist())


def create_model_cnn():
    torch.manual_seed(0)
    return create_model("test_cnn", in_chans=1)


def test_nothing_flagged_returns_the_model_unchanged(monkeypatch):
    clean = load_dataset("digits").train.subset(torch.arange(64))
    model = create_model_cnn()
    monkeypatch.setattr(NC, "reverse", lambda self, m, c, t, g: {
        "mask": torch.zeros(1, 16, 16), "pattern": torch.zeros(1, 16, 16), "norm": 10.0 + t % 2,
        "reached": True, "epochs": 1})
    nc = create_defense("nc", "smoke").fit(model, clean)
    assert nc.targets_ == [] and nc.target_ is None and "losses" not in nc.stats_
    for a, b in zip(model.state_dict().values(), nc.model_.state_dict().values()):
        assert torch.equal(a, b)
    assert nc.scores_["norms"] == [10.0, 11.0] * 5 and max(nc.scores_["anomaly_index"]) <= 0


def test_a_flagged_class_is_unlearned_with_its_reversed_trigger(monkeypatch):
    clean = load_dataset("digits").train.subset(torch.arange(64))
    model = create_model_cnn()
    corner = torch.zeros(1, 16, 16)
    corner[:, -3:, -3:] = 1

    def reverse(self, m, c, t, g):  # class 0 needs a 9-pixel corner, every other class about 40 pixels
        return {"mask": corner if t == 0 else torch.full((1, 16, 16), 0.16), "pattern": torch.ones(1, 16, 16),
                "norm": 9.0 if t == 0 else 40.0 + t, "reached": True, "epochs": 1}

    monkeypatch.setattr(NC, "reverse", reverse)
    nc = create_defense("nc", "smoke").fit(model, clean)
    assert nc.targets_ == [0] and nc.target_ == 0 and len(nc.stats_["losses"]) >= 1
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), nc.model_.state_dict().values()))
    assert torch.equal(nc.triggers_[0][0], corner)


def test_validate():
    with pytest.raises(TacreconError, match="unlearning_ratio"):
        NC(unlearning_ratio=1.0).validate()
    with pytest.raises(TacreconError, match="init_cost"):
        NC(init_cost=0.0).validate()


def test_planted_badnets_trigger_is_the_smallest(tmp_path):
    """A BadNets test_cnn on digits (target 0, 3x3 white patch): class 0's reversed mask is
    several times smaller than other classes' (about 6 s of training, 5 s of search)."""
    data = load_dataset("digits")
    run_attack("badnets", "digits", "test_cnn", tmp_path / "b", train={"epochs": 20, "progress": False})
    art = load_artifact(tmp_path / "b")
    clean = clean_subset(data.train, None, 300, 0, art.poison_index)
    nc = NC(nc_batch_size=32, nc_steps=10, nc_epochs=20)
    model = art.model.eval().requires_grad_(False)
    norms = {t: nc.reverse(model, clean, t, torch.Generator().manual_seed(t))["norm"] for t in (0, 1, 2, 3)}
    assert norms[0] < 0.5 * min(norms[1], norms[2], norms[3])
