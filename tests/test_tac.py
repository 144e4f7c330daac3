"""TAC: reconstruct, detect, unlearn; end to end on digits (planted BadNets found and removed)."""

import pytest
import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.data import load_dataset
from tacrecon.data.split import Split
from tacrecon.defenses import create_defense
import tacrecon.defenses.tac as tac_module
from tacrecon.defenses.tac import (TAC, detect, latents_of, prune_plan, prune_to_peak, reconstruct, stamp_share,
                                   surrogate_trigger, unlearn)
from tacrecon.errors import TacreconError
from tacrecon.metrics import accuracy, attack_rates, predict
from tacrecon.models import as_classifier, create_model
from tacrecon.scan import clean_subset
from tacrecon.train import TrainConfig
from tacrecon.workflows import DIGITS_REPAIR


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, digits):
    """A BadNets (target 0) and a clean resnet_small on digits, tuning seed 100, and clean sets."""
    root = tmp_path_factory.mktemp("art")
    out = {}
    for name in ("badnets", "none"):
        run_attack(name, "digits", "resnet_small", root / name, seed=100, train_overrides={"progress": False})
        art = load_artifact(root / name)
        out[name] = (art, clean_subset(digits.train, 0.2, None, 100, art.poison_index))
    out["root"] = root
    return out


def test_reconstruct_shifts_send_every_clean_sample_to_their_class(digits):
    model = create_model("test_cnn", in_chans=1).eval()
    clean = digits.train.subset(torch.arange(100))
    qp = reconstruct(model, clean)
    z = latents_of(model, clean.x).double()
    head = model.get_classifier().double()
    for k in range(10):
        pred = head(z + qp.shifts[k]).argmax(1)
        margin = head(z + qp.shifts[k])[:, k] - head(z + qp.shifts[k]).max(1).values
        assert bool((margin >= -1e-6).all()), k  # every sample reaches class k (up to ties)
        assert pred.numel() == 100
    assert torch.allclose(qp.norms, qp.shifts.norm(dim=1))


def test_detect_rules():
    norms = torch.tensor([3.0, 10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3])
    found = detect(norms)
    assert found.flagged == [0] and found.anomaly_index[0] > 10 and found.p_value < 0.01
    flat = torch.tensor([10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3, 10.6])
    assert detect(flat).flagged == [] and detect(flat, rule="pvalue").flagged == []
    assert detect(norms, rule="pvalue").flagged == [0] and detect(norms, rule="both").flagged == [0]
    two = norms.clone()
    two[5] = 3.2
    assert detect(two).flagged == [0, 5]  # multi-target: both, most anomalous first
    with pytest.raises(TacreconError, match="rule"):
        detect(norms, rule="vote")


def test_detect_relative_gate_ignores_a_tiny_gap_between_tight_norms():
    # a clean model whose classes all lie ~10 apart except one at 9.4: a huge MAD index (the
    # spread is tiny) but only 6% below the median, which is not a backdoor's shortcut
    tight = torch.tensor([9.4, 10.0, 10.02, 9.98, 10.01, 9.99, 10.03, 9.97, 10.0, 10.02])
    assert detect(tight, max_relative=1.0).flagged == [0]
    found = detect(tight, max_relative=0.8)
    assert found.flagged == [] and found.relative[0] == pytest.approx(9.4 / 10.0, rel=1e-3)
    backdoor = tight.clone()
    backdoor[0] = 5.0
    assert detect(backdoor, max_relative=0.8).flagged == [0]


def test_detect_high_side_flags_an_unreachable_class_only_when_asked():
    # SIG at a 10% rate: the target class is reached only at ~1.5x the typical cost
    norms = torch.tensor([15.0, 10.0, 10.5, 9.8, 10.2, 9.9, 10.1, 10.4, 9.7, 10.3])
    assert detect(norms).flagged == []  # one-sided by default
    found = detect(norms, max_relative=0.85, high_relative=1.25)
    assert found.flagged == [0] and found.unreachable == [0] and found.anomaly_index[0] < -3
    mild = norms.clone()
    mild[0] = 11.5  # an index far below -3, but only 13% above the median: a hard class, no backdoor
    assert detect(mild, high_relative=1.25).flagged == []
    both = norms.clone()
    both[4] = 3.0
    assert detect(both, max_relative=0.85, high_relative=1.25).flagged == [4, 0]  # the small side first
    assert detect(norms, rule="pvalue", high_relative=1.25).flagged == []  # the test of the minimum only


def test_planted_badnets_found_and_removed(planted, digits):
    art, clean = planted["badnets"]
    before = attack_rates(art.model, digits.test, art.attack, art.attack.label_map())[0]
    acc_before = accuracy(art.model, digits.test)
    state = {k: v.clone() for k, v in art.model.state_dict().items()}
    # the digits setting: on 8 x 8 digits pruning does not remove BadNets, the TAC loss does
    tac = create_defense("tac", **DIGITS_REPAIR).fit(art.model, clean, torch.Generator().manual_seed(0))
    assert tac.target_ == 0 and tac.targets_[0] == 0
    assert {"norms", "anomaly_index", "p_value"} <= set(tac.scores_)
    assert {"seconds", "scan_seconds", "repair_seconds"} <= set(tac.stats_)
    for k, v in art.model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, state[k]), k
    after = attack_rates(tac.model_, digits.test, art.attack, art.attack.label_map())[0]
    assert before > 0.9 and after < 0.2
    assert accuracy(tac.model_, digits.test) > acc_before - 0.05


def test_prune_plan_removes_the_unit_that_carries_the_shortcut():
    # unit 5 is silent on clean data but votes strongly for class 0: the cheapest way to class 0
    g = torch.Generator().manual_seed(0)
    z = torch.rand(200, 20, generator=g, dtype=torch.float64)
    z[:, 5] = 0
    w = torch.randn(5, 20, generator=g, dtype=torch.float64)
    w[0, 5] = 20.0
    units, history = prune_plan(z, w, torch.zeros(5, dtype=torch.float64), [0], stop=1.0)
    assert units == [5] and history[0][0] < 0.5 and history[-1][0] >= 1.0
    assert len(history) == len(units) + 1
    none, first = prune_plan(z, w, None, [0], stop=1e-6)  # already typical enough: nothing pruned
    assert none == [] and len(first) == 1
    capped, _ = prune_plan(z, w, None, [0], stop=100.0, step=2, max_units=3)
    assert len(capped) == 3  # max_units holds even when a step would pass it
    scale = torch.ones(20, dtype=torch.float64)
    scale[5] = 1e6  # unit 5 counted as if its clean spread were huge: it is ranked last
    first_units, _ = prune_plan(z, w, None, [0], stop=100.0, max_units=1)
    scaled_units, _ = prune_plan(z, w, None, [0], stop=100.0, max_units=1, scale=scale)
    assert first_units == [5] and scaled_units != [5]


def test_prune_repair_masks_the_pruned_units(planted, digits):
    art, clean = planted["badnets"]
    tac = TAC(method="prune", epochs=1).fit(art.model, clean, torch.Generator().manual_seed(0))
    head = tac.model_.get_classifier()
    assert tac.stats_["pruned"] == len(tac.pruned_) > 0
    assert bool((head.weight[:, tac.pruned_] == 0).all())  # still 0 after the fine-tune
    assert not any("weight_orig" in k for k in tac.model_.state_dict())  # a plain checkpoint
    assert tac.stats_["relative_norms"][-1][0] >= tac.prune_stop


def test_clean_model_not_flagged_and_left_unchanged(planted):
    art, clean = planted["none"]
    tac = TAC().fit(art.model, clean)
    assert tac.target_ is None and tac.targets_ == []
    assert tac.scores_["prior"] is None  # a random fifth of digits is balanced enough: no correction
    assert "repair_seconds" not in tac.stats_
    for a, b in zip(art.model.state_dict().values(), tac.model_.state_dict().values()):
        assert torch.equal(a, b)


def test_unlearn_recompute_and_frozen_head(digits):
    model = create_model("test_cnn", in_chans=1)
    clean = digits.train.subset(torch.arange(64))
    shift = reconstruct(model, clean).shifts[0].float()
    head_before = model.get_classifier().weight.clone()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01, progress=False, crop_padding=0, flip=False)
    history = unlearn(model, clean, 0, shift, cfg, beta=1.0, recompute=True, freeze_head=True)
    assert len(history) == 2
    assert torch.equal(model.get_classifier().weight, head_before)


def test_multi_target_unlearn_loss_averages_the_targets(digits):
    import torch.nn.functional as F

    from tacrecon.defenses.tac import unlearn_loss

    model = create_model("test_cnn", in_chans=1).eval()
    x, y = digits.train.x[:32], digits.train.y[:32]
    shifts = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0))
    got = unlearn_loss([shifts], [0, 3], beta=0.5)(model, x, y)
    z, head = model.latent(x), model.get_classifier()
    terms = [F.cross_entropy(head(z[y != t] + shifts[i]), y[y != t]) for i, t in enumerate([0, 3])]
    assert torch.allclose(got, F.cross_entropy(head(z), y) + 0.5 * (terms[0] + terms[1]) / 2)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, progress=False, crop_padding=0, flip=False)
    clean = digits.train.subset(torch.arange(64))
    assert len(unlearn(model, clean, [0, 3], reconstruct(model, clean).shifts[[0, 3]].float(), cfg)) == 1


def test_tac_config_is_strict():
    with pytest.raises(TacreconError, match="unknown TAC key"):
        TAC.from_dict({"treshold": 2})
    with pytest.raises(TacreconError, match="quantile"):
        TAC.from_dict({"quantile": 0})


def test_class_prior_only_where_the_clean_counts_are_imbalanced():
    norms = torch.tensor([1.0, 1.2, 0.9, 1.1])
    balanced = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3])  # 3 / 2 = 1.5 < 2: sampling noise
    imbalanced = torch.repeat_interleave(torch.arange(4), torch.tensor([80, 40, 20, 20]))
    assert TAC().class_prior(norms, balanced, 4) is None
    assert TAC().class_prior(norms, imbalanced, 4) is not None
    assert TAC(prior="off").class_prior(norms, imbalanced, 4) is None
    assert TAC(prior="counts").class_prior(norms, balanced, 4) is not None
    assert TAC(prior_ratio=10).class_prior(norms, imbalanced, 4) is None
    noisy = torch.repeat_interleave(torch.arange(10), torch.tensor([6, 4, 8, 11, 4, 6, 14, 7, 8, 4]))
    assert TAC().class_prior(torch.rand(10), noisy, 10) is None  # spans 3.5x, by chance alone
    with pytest.raises(TacreconError, match="prior in auto, counts, off, prior_ratio"):
        TAC.from_dict({"prior": "yes"})


def test_class_prior_turns_a_frequent_clean_class_into_a_typical_one():
    # 20 classes, norms falling with the count as n^-0.5; class 0 has 4x the images of the others
    counts = torch.tensor([400] + [100] * 19)
    norms = counts.double() ** -0.5 * (1 + 0.02 * torch.randn(20, generator=torch.Generator().manual_seed(0)))
    labels = torch.repeat_interleave(torch.arange(20), counts)
    assert detect(norms, 3.0, max_relative=0.85).flagged == [0]  # a false positive without the prior
    prior = TAC().class_prior(norms, labels, 20)
    assert detect(norms / prior, 3.0, max_relative=0.85).flagged == []
    norms[12] *= 0.5  # a rare class with a backdoor: cheap for its frequency
    prior = TAC().class_prior(norms, labels, 20)
    assert detect(norms / prior, 3.0, max_relative=0.85).flagged == [12]


def test_universality_ratios_are_at_least_one(digits):
    from tacrecon.defenses.tac import universality_ratios

    torch.manual_seed(3)
    model = create_model("test_cnn", in_chans=1).eval()
    clean = digits.train.subset(torch.arange(80))
    z = latents_of(model, clean.x)
    qp = reconstruct(model, clean, latents=z)
    ratios = universality_ratios(model, z, clean.y, qp)
    assert ratios.shape == (10,)
    reached = qp.norms == 0  # an untrained model may already send every sample to a class
    assert bool((ratios[~reached] >= 1 - 1e-9).all()), ratios  # ||s_k|| >= every d_ik
    assert bool((ratios[reached] == 0).all())
    tac = TAC(score="ratio", repair=False).fit(model, clean)
    assert tac.scores_["score"] == "ratio" and len(tac.scores_["ratios"]) == 10


def test_prune_to_peak_removes_the_trigger_units_of_an_unreachable_class():
    # class 0 is no better than the average class on the 38 ordinary units, so clean samples reach
    # it only at a cost; units 3 and 4, silent on clean data, vote for it: its cheapest way in
    g = torch.Generator().manual_seed(0)
    z = torch.rand(300, 40, generator=g, dtype=torch.float64)
    z[:, 3:5] = 0
    w = torch.randn(5, 40, generator=g, dtype=torch.float64)
    w[0] = w[1:].mean(0)
    w[0, 3:5] = 8.0
    b = torch.zeros(5, dtype=torch.float64)
    units, norms = prune_to_peak(z, w, b, 0)
    assert sorted(units) == [3, 4] and norms[2] == float("inf")  # without them class 0 is out of reach
    w[0] += 0.3 * torch.randn(40, generator=g, dtype=torch.float64)  # now reachable without them too
    units, norms = prune_to_peak(z, w, b, 0, patience=3)
    assert sorted(units[:2]) == [3, 4] and norms[2] > 2 * norms[0]  # the norm jumps as they go
    best = max(range(len(norms)), key=norms.__getitem__)
    assert len(units) == best and len(norms) == best + 3 + 1  # kept up to the max, then `patience` steps
    assert prune_to_peak(z, w, b, 0, exclude=[3])[0][0] == 4
    # the clean-accuracy guard: the trigger units cost the clean samples nothing, the next ones do
    labels = (z @ w.T + b).argmax(1)
    guarded, _ = prune_to_peak(z, w, b, 0, patience=3, labels=labels, max_drop=0.0)
    assert sorted(guarded) == [3, 4]
    assert len(prune_to_peak(z, w, b, 0, max_units=1)[0]) <= 1


def test_a_class_flagged_on_the_high_side_is_pruned_to_its_peak(monkeypatch):
    # the repair path of an unreachable class: prune_to_peak, not prune_plan, and only up to the
    # clean-accuracy guard; the latents are the inputs of a one-layer model
    import dataclasses

    import tacrecon.defenses.tac as tac_module
    from torch import nn

    g = torch.Generator().manual_seed(0)
    z = torch.rand(300, 40, generator=g)
    z[:, 3:5] = 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 5))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 40, generator=g))
        model[1].weight[0] = model[1].weight[1:].mean(0) + 0.3 * torch.randn(40, generator=g)
        model[1].weight[0, 3:5] = 8.0
        model[1].bias.zero_()
    x = z.reshape(300, 1, 1, 40)
    clean = Split(x, model(x).argmax(1))
    real = tac_module.detect

    def high_side(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), flagged=[0], unreachable=[0])

    monkeypatch.setattr(tac_module, "detect", high_side)
    tac = TAC(epochs=0, peak_max_drop=0.0).fit(model, clean)
    assert tac.unreachable_ == [0] and sorted(tac.pruned_) == [3, 4]
    assert 0 in tac.stats_["unreachable_norms"] and tac.stats_["relative_norms"] == []
    assert bool((tac.model_[1].weight[:, [3, 4]] == 0).all())
    assert torch.equal(model(x).argmax(1), tac.model_(x).argmax(1))  # the clean predictions are kept


def test_surrogate_trigger_is_bounded_and_reproduces_the_tac(planted):
    art, clean = planted["badnets"]
    model = as_classifier(art.model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shift = reconstruct(model, clean).shifts[0].float()
    delta = surrogate_trigger(model, clean, 0, shift, eps=0.3, steps=60, batch_size=64)
    assert delta.shape == clean.x.shape[1:] and float(delta.abs().max()) <= 0.3
    assert model.training  # its mode is given back, its weights untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    others = clean.x[clean.y != 0]

    def error(d):
        return float((latents_of(model, (others + d).clamp(0, 1)) - latents_of(model, others) - shift)
                     .square().sum(1).mean())
    assert error(delta) < 0.8 * error(torch.zeros_like(delta))
    hits = float((predict(model, (others + delta).clamp(0, 1)) == 0).float().mean())
    base = float((predict(model, others) == 0).float().mean())
    # it works like a trigger: it sends other classes to the target (0.32 vs 0.0 with two torch
    # threads, 0.19 vs 0.0 with one, whose model trains a little differently)
    assert hits > base + 0.1
    with pytest.raises(TacreconError, match="no image outside class 0"):
        surrogate_trigger(model, clean.subset(torch.nonzero(clean.y == 0).flatten()), 0, shift, eps=0.3)


def test_stamp_share_stamps_the_first_share_of_a_batch_in_turn():
    deltas = torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), -0.25)])
    x, y = torch.full((10, 1, 2, 2), 0.5), torch.arange(10)
    out, labels = stamp_share(deltas, 0.4)(x, y, torch.Generator())
    assert torch.equal(labels, y) and torch.equal(x, torch.full((10, 1, 2, 2), 0.5))  # the input is not modified
    assert out[:4, 0, 0, 0].tolist() == [0.75, 0.25, 0.75, 0.25] and bool((out[4:] == 0.5).all())
    assert torch.equal(stamp_share(deltas, 0.01)(x, y, torch.Generator())[0], x)  # a share under one image


def test_surrogate_repair_keeps_the_stand_ins_and_stamps_the_fine_tune(planted, monkeypatch):
    art, clean = planted["badnets"]
    seen = []
    real = tac_module.fit

    def spy(*args, **kwargs):
        seen.append(kwargs.get("batch_hook"))
        return real(*args, **kwargs)
    monkeypatch.setattr(tac_module, "fit", spy)
    tac = TAC(epochs=1, surrogate_eps=0.3, surrogate_steps=20).fit(art.model, clean, torch.Generator().manual_seed(0))
    assert tac.targets_ == [0] and tac.surrogates_.shape == (1, *clean.x.shape[1:])
    assert tac.stats_["surrogate_targets"] == [0] and 0 <= tac.stats_["surrogate_success"][0] <= 1
    assert seen and seen[-1] is not None
    plain = TAC(epochs=1, surrogate_eps=0.0).fit(art.model, clean, torch.Generator().manual_seed(0))
    assert not hasattr(plain, "surrogates_") and seen[-1] is None
    high = TAC()
    high.unreachable_ = [0]  # a class of the high side gets no surrogate (prune_to_peak handles it)
    assert high.surrogates(as_classifier(art.model), clean, [0], tac.shifts_, torch.Generator()) is None
    for bad in ({"surrogate_eps": 1.5}, {"surrogate_ratio": 1.0}, {"surrogate_steps": 0}):
        with pytest.raises(TacreconError, match="surrogate"):
            TAC(**bad).validate()


def test_repair_writes_the_stand_in_beside_the_repaired_model(planted, tmp_path):
    from tacrecon.scan import run_repair

    model = str(planted["root"] / "badnets")
    r = run_repair(model, "digits", tmp_path / "with", torch.device("cpu"), {"epochs": 1, "surrogate_steps": 5},
                   clean_fraction=0.2, seed=100)
    assert r["stand_in"] == "stand_in.png"
    assert (tmp_path / "with" / "stand_in.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_repair(model, "digits", tmp_path / "without", torch.device("cpu"), {"epochs": 1, "surrogate_eps": 0.0},
                   clean_fraction=0.2, seed=100)
    assert "stand_in" not in r and not (tmp_path / "without" / "stand_in.png").exists()


def hard_shortcut_model():
    """A one-layer model whose class 0 has a shortcut unit that a small latent shift uses, except
    for 5% of the samples that sit far on its wrong side: the plain QP (the max over samples) finds
    nothing, the robust one (q 0.9) finds class 0. Latents are the inputs: (400, 1, 1, 30)."""
    from torch import nn

    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 30, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 6))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(6, 30, generator=g))
        model[1].weight[:, 0] = 0
        model[1].weight[0, 0] = 20.0
        model[1].bias.zero_()
    z[:, 0] = 0
    z[:20, 0] = -4.0
    x = z.reshape(400, 1, 1, 30)
    return model, Split(x, model(x).argmax(1).detach())


def test_second_look_flags_a_class_the_plain_test_misses_and_prunes_its_unit():
    model, clean = hard_shortcut_model()
    plain = TAC(repair=False, second_quantile=0).fit(model, clean)
    assert plain.targets_ == [] and plain.second_ == [] and "second_norms" not in plain.scores_
    look = TAC(repair=False, second_quantile=0.9).fit(model, clean)
    assert look.targets_ == [0] and look.second_ == [0]
    assert look.scores_["second_anomaly_index"][0] > 3 and look.scores_["second_relative"][0] < 0.85
    assert float(look.shifts_[0].norm()) == pytest.approx(look.scores_["second_norms"][0])  # the robust s_t
    assert float(look.shifts_[1].norm()) == pytest.approx(look.scores_["norms"][1])  # the others keep the plain one
    tac = TAC(second_quantile=0.9, epochs=0).fit(model, clean)
    assert tac.pruned_[0] == 0 and bool((tac.model_[1].weight[:, 0] == 0).all())
    assert bool((model[1].weight[0, 0] == 20).all())  # the input model is not modified
    with pytest.raises(TacreconError, match="second_quantile"):
        TAC(second_quantile=1.0).validate()


def test_prune_plan_keeps_the_excluded_units_zeroed_and_uncounted():
    model, clean = hard_shortcut_model()
    z = clean.x.flatten(1)
    w, b = model[1].weight, model[1].bias
    units, history = prune_plan(z, w, b, [0], stop=1.1, quantile=0.9)
    assert units[0] == 0 and history[0][0] < 0.5
    rest, later = prune_plan(z, w, b, [0], stop=1.1, quantile=0.9, exclude=[0])
    assert rest == units[1:] and later == history[1:]  # as if unit 0 had been pruned already
    assert bool((w[:, 0] != 0).any())  # the weights given are not modified
