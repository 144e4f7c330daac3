"""Several backdoors in one model (``multi``) and the all-to-all setting, on digits (CPU, seconds)."""

import pytest
import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import create_attack
from tacrecon.commands.defend import defend_artifact
from tacrecon.data import load_dataset
from tacrecon.defenses import create_defense
from tacrecon.errors import TacreconError
from tacrecon.metrics import attack_rates

TWO = [{"name": "badnets", "target": 1}, {"name": "blended", "target": 7}]
TRAIN = {"epochs": 6, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def multi_artifact(tmp_path_factory):
    """BadNets -> 1 and Blended -> 7 in one resnet_small, 20% of the digits split in all."""
    out = tmp_path_factory.mktemp("multi") / "art"
    record = run_attack("multi", "digits", "resnet_small", out, seed=0, config={"attacks": TWO, "rate": 0.2},
                        train=TRAIN)
    return out, record


def ready(data, **kw):
    attack = create_attack("multi", **kw)
    attack.setup(data, torch.Generator().manual_seed(0))
    return attack


def test_members_targets_and_names():
    attack = create_attack("multi", attacks=TWO)
    assert attack.target == 1 and [m.target for m in attack.members_] == [1, 7]
    assert [m.rate for m in attack.members_] == [0.05, 0.05]  # the rate is shared
    assert create_attack("multi").to_dict()["target"] == 0  # default members: badnets -> 0, blended -> 1
    assert [m.target for m in create_attack("multi", target=3).members_] == [3, 4]
    again = create_attack("multi", **attack.to_dict())  # what an artifact stores reads back the same
    assert again.to_dict() == attack.to_dict()


@pytest.mark.parametrize("config,message", [
    ({"attacks": [{"name": "badnets", "target": 1}, {"name": "blended", "target": 1}]}, "share target 1"),
    ({"attacks": [{"name": "badnets"}, {"name": "blended", "target": 0}]}, "share target 0"),
    ({"attacks": [{"name": "badnets", "label_mode": "all2all"}, {"name": "blended"}]}, "not all-to-one"),
    ({"label_mode": "all2all"}, "label_mode must be all2one"),
    ({"attacks": [{"name": "badnets", "rate": 0.1}, {"name": "blended"}]}, "gives rate, which the composite"),
    ({"attacks": [{"name": "badnets"}]}, "two or more members"),
    ({"attacks": [{"name": "badnets"}, {"name": "wanet"}]}, "wanet trains its own way"),
    ({"attacks": [{"name": "badnets"}, {"name": "adap_blend"}]}, "adap_blend trains its own way"),
    ({"attacks": [{"name": "badnets"}, {"name": "multi"}]}, "not a backdoor of its own"),
    ({"attacks": [{"name": "badnets"}, {"name": "nope"}]}, "unknown attack 'nope'"),
    ({"attacks": [{"name": "badnets"}, {"name": "blended", "alpha": 2.0}]}, r"attacks\[1\] blended: alpha"),
    ({"attacks": [{"name": "badnets"}, "blended"]}, "must be a mapping with a name"),
    ({"attacks": TWO, "target": 3}, "not the first member's"),
])
def test_bad_configs(config, message):
    with pytest.raises(TacreconError, match=message):
        create_attack("multi", **config)


def test_members_with_one_trigger_are_an_error(digits):
    same = [{"name": "blended", "target": 1}, {"name": "blended", "target": 2}]
    with pytest.raises(TacreconError, match="stamp the same trigger"):
        ready(digits, attacks=same)
    ready(digits, attacks=[same[0], {**same[1], "pattern_seed": 1}])  # another pattern: fine
    with pytest.raises(TacreconError, match="outside"):
        ready(digits, attacks=[{"name": "badnets", "target": 9}, {"name": "blended", "target": 10}])


def test_poison_gives_each_member_its_own_disjoint_samples(digits):
    attack = ready(digits, attacks=TWO, rate=0.2)
    train = digits.train
    poisoned, idx = attack.poison(train, torch.Generator().manual_seed(1))
    parts = attack.member_indices(train.y, torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(parts).sort().values, idx)  # the same draws
    assert [p.numel() for p in parts] == [round(0.1 * len(train))] * 2
    assert idx.unique().numel() == idx.numel()  # disjoint
    for member, part in zip(attack.members_, parts):
        assert bool((train.y[part] != member.target).all())
        assert bool((poisoned.y[part] == member.target).all())
        assert torch.equal(poisoned.x[part], member(train.x[part]))
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(poisoned.x[rest], train.x[rest]) and torch.equal(poisoned.y[rest], train.y[rest])
    again, idx2 = attack.poison(train, torch.Generator().manual_seed(1))
    assert torch.equal(idx, idx2) and torch.equal(again.x, poisoned.x)  # deterministic


def test_backdoors_are_the_members(digits):
    attack = ready(digits, attacks=TWO)
    doors = attack.backdoors()
    assert [(b.name, b.target) for b in doors] == [("badnets->1", 1), ("blended->7", 7)]
    x = digits.test.x[:8]
    assert torch.equal(doors[1].trigger(x), attack.members_[1](x))
    assert torch.equal(attack(x), doors[0].trigger(x))  # the multi attack's own trigger: the first member's
    assert doors[1].label_map(torch.tensor([0, 3])).tolist() == [7, 7]


def test_both_backdoors_are_implanted_and_survive_the_artifact(multi_artifact, digits):
    out, record = multi_artifact
    per = record["asr_per_backdoor"]
    assert set(per) == {"badnets->1", "blended->7"}
    assert min(per.values()) > 0.6, per  # chance is 0.1
    assert record["asr"] == max(per.values()) and record["ra"] == min(record["ra_per_backdoor"].values())
    art = load_artifact(out)
    x = digits.test.x[:32]
    fresh = ready(digits, attacks=TWO, rate=0.2)
    for loaded, made in zip(art.attack.backdoors(), fresh.backdoors()):  # the saved state is each member's
        assert torch.equal(loaded.trigger(x), made.trigger(x))
        asr = attack_rates(art.model, digits.test, loaded.trigger, loaded.label_map)[0]
        assert asr == per[loaded.name]
    assert art.poison_index.numel() == record["poisoned"] == 2 * round(0.1 * len(digits.train))


def test_a_defense_records_every_backdoor_and_target(multi_artifact, digits):
    out, record = multi_artifact
    art = load_artifact(out)
    result = defend_artifact(create_defense("ft", "smoke"), art, digits, seed=0, clean_n=200)
    assert result["attack_targets"] == [1, 7] and result["attack_target"] == 1
    assert result["before"]["asr_per_backdoor"] == record["asr_per_backdoor"]
    after = result["after"]["asr_per_backdoor"]
    assert set(after) == {"badnets->1", "blended->7"} and result["after"]["asr"] == max(after.values())


def test_tac_lists_every_flagged_class(multi_artifact, digits):
    """TAC's record names every class its scan flags, and the repair covers each of them."""
    out, _ = multi_artifact
    art = load_artifact(out)
    tac = create_defense("tac", "smoke", force_target=-1)  # the smoke budget forces class 0 otherwise
    result = defend_artifact(tac, art, digits, seed=0, clean_fraction=0.2)
    assert result["targets"] == tac.scan_.flagged == result["scores"]["targets"]
    assert result["repaired"] == bool(result["targets"])


@pytest.mark.parametrize("name", ["badnets", "blended"])
def test_all2all_end_to_end(name, tmp_path, digits):
    """Trained with y -> y + 1, measured with y -> y + 1, through the artifact and a defense."""
    out = tmp_path / name
    record = run_attack(name, "digits", "resnet_small", out, seed=0, config={"label_mode": "all2all"}, train=TRAIN)
    assert record["asr"] > 0.6 and set(record["asr_per_backdoor"]) == {name}  # chance: 0.1
    art = load_artifact(out)
    (door,) = art.attack.backdoors()
    assert door.target is None and door.label_map(torch.tensor([0, 5, 9])).tolist() == [1, 6, 0]
    poisoned = art.poison_index
    assert poisoned.numel() == round(0.1 * len(digits.train))
    # the test images of every class count, each sent to its successor
    assert attack_rates(art.model, digits.test, door.trigger, door.label_map)[0] == record["asr"]
    result = defend_artifact(create_defense("none"), art, digits, seed=0, clean_n=100)
    assert result["attack_targets"] == [] and result["after"]["asr"] == pytest.approx(record["asr"])
