"""Conformance of every registered defense on a tiny digits artifact (CPU, seconds)."""

import pytest
import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses import DEFENSES, create_defense
from tacrecon.errors import TacreconError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "badnets"
    run_attack("badnets", "digits", "test_cnn", out, train={"epochs": 2, "progress": False})
    art = load_artifact(out)
    clean = clean_subset(load_dataset("digits").train, None, 128, 0, art.poison_index)
    return art, clean


def fitted(name, tiny, seed=0):
    art, clean = tiny
    return create_defense(name, "smoke").fit(art.model, clean, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_fit_contract(name, tiny):
    art, clean = tiny
    before = {k: v.clone() for k, v in art.model.state_dict().items()}
    defense = create_defense(name, "smoke")
    assert defense.fit(art.model, clean, torch.Generator().manual_seed(0)) is defense
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the input model ({k})"
    with torch.no_grad():
        assert defense.model_(clean.x[:5]).shape == (5, 10)
    assert defense.target_ is None or 0 <= defense.target_ < 10
    assert isinstance(defense.stats_["seconds"], float)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_same_seed_same_weights(name, tiny):
    a, b = fitted(name, tiny), fitted(name, tiny)
    for (k, va), vb in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        assert torch.equal(va, vb), f"{name}: {k} differs between two runs with one seed"


def test_empty_clean_set_and_unknown_defense(tiny):
    art, clean = tiny
    with pytest.raises(TacreconError, match="empty"):
        create_defense("tac").fit(art.model, clean.subset(torch.tensor([], dtype=torch.long)))
    with pytest.raises(TacreconError, match="unknown defense"):
        create_defense("magic")


@pytest.mark.parametrize("name", DEFENSES.names())
def test_paper_and_budgets(name):
    cls = DEFENSES.get(name)
    assert cls.paper, f"{name} names no paper"
    assert {"cpu", "smoke"} <= set(cls.budgets), f"{name} lacks a cpu or smoke budget"
    for budget in cls.budgets:
        assert isinstance(create_defense(name, budget), cls)
    with pytest.raises(TacreconError, match="no budget"):
        create_defense(name, "huge")
