"""tacrecon.tac.prune: the units that carry a TAC, removed greedily from clean latents."""

import torch

from tacrecon.tac.prune import prune_plan, prune_to_peak


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


def test_prune_plan_keeps_the_excluded_units_zeroed_and_uncounted(shortcut_model):
    model, clean = shortcut_model
    z = clean.x.flatten(1)
    w, b = model[1].weight, model[1].bias
    units, history = prune_plan(z, w, b, [0], stop=1.1, quantile=0.9)
    assert units[0] == 0 and history[0][0] < 0.5
    rest, later = prune_plan(z, w, b, [0], stop=1.1, quantile=0.9, exclude=[0])
    assert rest == units[1:] and later == history[1:]  # as if unit 0 had been pruned already
    assert bool((w[:, 0] != 0).any())  # the weights given are not modified
