"""Conformance of every registered attack, on the bundled digits data (CPU, seconds each)."""

import pytest
import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import ATTACKS, create_attack
from tacrecon.data import load_dataset
from tacrecon.errors import TacreconError
from tacrecon.metrics import attack_rates
from tacrecon.recipes import build_model, default_train_config, model_kwargs

NAMES = ATTACKS.names()
# Dirty-label triggers that need no training to exist. SIG (clean-label) is left out: on 16x16
# digits its stripes do not implant in a short training (measured ASR 0.03-0.09 after 6-15
# epochs); its ASR is measured on CIFAR-10 in benchmarks/attacks_cpu.py.
STATIC = ["badnets", "blended", "adap_blend", "tact"]
FAST = {"epochs": 1, "batch_size": 128, "progress": False}
# conformance does not need a real surrogate: the attacks that train one get a tiny one
SMALL = {"grond": {"surrogate_arch": "test_cnn", "surrogate_epochs": 1, "uap_epochs": 1.0},
         "lc": {"surrogate_arch": "test_cnn", "surrogate_epochs": 1, "steps": 5}}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def ready(name, data, **kw):
    attack = create_attack(name, **{**SMALL.get(name, {}), **kw})
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


@pytest.mark.parametrize("name", NAMES)
def test_apply_keeps_shape_dtype_device_range_and_is_deterministic(name, digits):
    attack = ready(name, digits)
    x = digits.test.x[:16]
    out = attack(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, attack(x))
    assert torch.equal(out, ready(name, digits)(x))  # same seed, same trigger
    assert torch.equal(x, digits.test.x[:16])  # the input is not modified
    if name != "none":
        assert not torch.equal(out, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["all2one", "all2all"])
def test_poison_marks_and_relabels(name, mode, digits):
    rate = 0.05
    try:
        attack = ready(name, digits, label_mode=mode, rate=rate, target=3)
    except TacreconError:
        attack = create_attack(name)
        assert mode == "all2all" and (attack.clean_label or attack.composite)  # one target per backdoor
        return
    train = digits.train
    poisoned, idx = attack.poison(train, torch.Generator().manual_seed(1))
    if name == "none":
        assert idx.numel() == 0 and torch.equal(poisoned.x, train.x)
        return
    assert abs(idx.numel() - rate * len(train)) <= len(attack.backdoors()) / 2  # each backdoor's count rounded
    assert idx.unique().numel() == idx.numel()
    if attack.clean_label:
        assert bool((train.y[idx] == 3).all()) and torch.equal(poisoned.y[idx], train.y[idx])
    else:
        assert bool((poisoned.y[idx] != train.y[idx]).all())  # only samples the attack really relabels
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.x[rest], train.x[rest]) and torch.equal(poisoned.y[rest], train.y[rest])
    # every marked image carries one backdoor's trigger and that backdoor's label, not only a new label
    marked = torch.zeros(idx.numel(), dtype=torch.bool)
    for door in attack.backdoors():
        with torch.no_grad():
            stamped = (poisoned.x[idx] == door.trigger(train.x[idx])).flatten(1).all(1)
        marked |= stamped & (poisoned.y[idx] == door.label_map(train.y[idx]))
    assert bool(marked.all())


@pytest.mark.parametrize("name", NAMES)
def test_artifact_round_trip(name, tmp_path, digits):
    out = tmp_path / name
    record = run_attack(name, "digits", "test_cnn", out, seed=0, config=SMALL.get(name), train=FAST)
    art = load_artifact(out)
    assert art.record == record and art.poison_index.numel() == record["poisoned"]
    fresh = ready(name, digits) if name != "none" else None
    x = digits.test.x[:32]
    triggered = art.attack(x)
    if fresh is not None and not fresh.learned:
        assert torch.equal(triggered, fresh(x))
    with torch.no_grad():
        a = art.model(triggered)
    again = load_artifact(out)
    with torch.no_grad():
        torch.testing.assert_close(again.model(again.attack(x)), a, rtol=0, atol=0)
    assert run_attack(name, "digits", "test_cnn", out, seed=0, config=SMALL.get(name), train=FAST) == record  # reused
    if name != "none":  # the saved triggers are the ones the model was attacked with; ASR is the worst backdoor's
        doors = again.attack.backdoors()
        rates = {d.name: attack_rates(again.model, digits.test, d.trigger, d.label_map)[0] for d in doors}
        assert rates == record["asr_per_backdoor"] and record["asr"] == max(rates.values())


def test_incomplete_artifact_is_redone(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"half written")
    record = run_attack("badnets", "digits", "test_cnn", out, train=FAST)
    assert load_artifact(out).record == record


@pytest.mark.parametrize("name", STATIC)
def test_static_attack_implants_a_backdoor(name, digits):
    attack = ready(name, digits, rate=0.1)
    model = build_model("resnet_small", model_kwargs("resnet_small", digits, width=8), seed=0)
    cfg = default_train_config("digits", epochs=6, batch_size=64, progress=False)
    attack.train(model, digits.train, cfg, torch.Generator().manual_seed(0))
    asr, _ = attack_rates(model, digits.test, attack, attack.label_map())
    assert asr > 0.6, f"{name}: ASR {asr:.2f} after a short training"  # chance is 0.1


def test_bad_input(digits):
    with pytest.raises(TacreconError, match="unknown attack"):
        create_attack("nope")
    for rate in (0, 1, 1.5, -0.1):
        with pytest.raises(TacreconError, match="rate"):
            create_attack("badnets", rate=rate)
    with pytest.raises(TacreconError, match="outside"):
        ready("badnets", digits, target=10)
    with pytest.raises(TacreconError, match="label_mode"):
        create_attack("badnets", label_mode="one2one")
    with pytest.raises(TacreconError, match="unknown BadNets key"):
        create_attack("badnets", bogus=1)
    attack = ready("badnets", digits)
    for bad in (torch.rand(3, 16, 16), torch.zeros(2, 1, 16, 16, dtype=torch.long), "img"):
        with pytest.raises(TacreconError, match=r"\(N, C, H, W\)"):
            attack(bad)
    with pytest.raises(TacreconError, match="clean-label"):
        create_attack("sig", label_mode="all2all")
    with pytest.raises(TacreconError, match="eligible"):
        ready("sig", digits, rate=0.5).poison(digits.train, torch.Generator())
