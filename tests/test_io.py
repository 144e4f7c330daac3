"""Checkpoints, safe weight loading, atomic files, provenance."""

import json

import pytest
import torch

from tacrecon.errors import TacreconError
from tacrecon.io import (
    UMASK,
    atomic_write_json,
    load_state,
    load_weights,
    provenance,
    read_json,
    save_checkpoint,
    tensors_to_save,
)
from tacrecon.models import create_model, load_checkpoint


def make(seed=0):
    torch.manual_seed(seed)
    return create_model("test_cnn", num_classes=4, in_chans=1, mean=[0.3], std=[0.2]).eval()


def test_checkpoint_round_trip(tmp_path):
    model = make()
    kwargs = {"num_classes": 4, "in_chans": 1, "mean": [0.3], "std": [0.2]}
    save_checkpoint(model.to(memory_format=torch.channels_last), tmp_path, {"arch": "test_cnn", "model_kwargs": kwargs})
    loaded, meta = load_checkpoint(tmp_path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():  # same memory format, same kernels: identical logits
        torch.testing.assert_close(loaded.to(memory_format=torch.channels_last)(x), model(x), rtol=0, atol=0)
    assert meta["arch"] == "test_cnn" and meta["format"] == "tacrecon-model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_pt_weights_load_with_weights_only(tmp_path):
    model = make()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pt")
    for name in ("w.pt", "wrapped.pt"):
        other = make(seed=1)
        load_state(other, load_weights(tmp_path / name), name)
        assert torch.equal(other.fc.weight, model.fc.weight)


def test_pickled_object_is_refused(tmp_path):
    torch.save({"model": make()}, tmp_path / "full.pt")  # a whole pickled module, not a state_dict
    with pytest.raises(TacreconError, match="pickled Python objects .* save model.state_dict"):
        load_weights(tmp_path / "full.pt")


def test_corrupt_and_missing_weights(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    for name in ("bad.safetensors", "bad.pt"):
        with pytest.raises(TacreconError, match="cannot read weights"):
            load_weights(tmp_path / name)
    with pytest.raises(TacreconError, match="no such weights file"):
        load_weights(tmp_path / "absent.pt")


def test_state_mismatch_is_one_line():
    state = make().state_dict()
    big = create_model("test_cnn", num_classes=5, in_chans=1)
    with pytest.raises(TacreconError, match="shape mismatch: fc") as err:
        load_state(big, state, "w.pt")
    assert "\n" not in str(err.value)
    state.pop("fc.bias")
    with pytest.raises(TacreconError, match="missing: fc.bias"):
        load_state(make(), state, "w.pt")


def test_atomic_json_and_read_errors(tmp_path):
    atomic_write_json(tmp_path / "a" / "r.json", {"x": 1})
    assert read_json(tmp_path / "a" / "r.json") == {"x": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["r.json"]
    (tmp_path / "b.json").write_text("{oops")
    with pytest.raises(TacreconError, match="not valid JSON"):
        read_json(tmp_path / "b.json")
    with pytest.raises(TacreconError, match="no such file"):
        read_json(tmp_path / "none.json")
    assert (tmp_path / "a" / "r.json").stat().st_mode & 0o777 == 0o666 & ~UMASK  # not mkstemp's 0600


def test_tied_weights_are_saved_as_copies():
    from safetensors.torch import load, save

    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
    net[1].weight = net[0].weight  # tied
    tensors = load(save(tensors_to_save(net)))
    assert torch.equal(tensors["0.weight"], tensors["1.weight"])


def test_load_checkpoint_rejects_other_json(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(TacreconError, match="not a tacrecon model"):
        load_checkpoint(tmp_path)


def test_provenance_fields():
    p = provenance("cpu")
    assert {"commit", "torch", "device", "time", "tacrecon"} <= set(p)
    assert p["device"].startswith("cpu")


def test_git_commit_is_read_once_per_process(monkeypatch):
    # a long run's results name the code it imported, not a commit checked out while it ran
    from tacrecon import io

    io.git_commit.cache_clear()
    first = io.git_commit()

    def no_git(*args, **kwargs):
        raise AssertionError("git ran again")
    monkeypatch.setattr(io.subprocess, "run", no_git)
    assert io.git_commit() == first and provenance("cpu")["commit"] == first
