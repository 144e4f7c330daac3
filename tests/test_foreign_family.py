"""The foreign model family (benchmarks/foreign/): triggers, poisoning, nets, plan. Tiny random
tensors only, never the real data."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.foreign import nets, plan, triggers  # noqa: E402
from benchmarks.foreign.train import augment  # noqa: E402

NAMES = sorted(triggers.TEST)


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("table", ["TRAIN", "TEST"])
@pytest.mark.parametrize("name", NAMES)
def test_trigger_shape_range_and_change(table, name):
    fn = getattr(triggers, table)[name]
    x = images()
    y = fn(x, 3)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)
    assert (y - x).abs().flatten(1).amax(1).min() > 0.01  # every image is changed
    assert torch.equal(x, images())  # the input is not modified


@pytest.mark.parametrize("table", ["TRAIN", "TEST"])
@pytest.mark.parametrize("name", NAMES)
def test_trigger_deterministic_and_seeded(table, name):
    fn = getattr(triggers, table)[name]
    x = images()
    assert torch.equal(fn(x, 11), fn(x.clone(), 11))
    assert not torch.equal(fn(x, 11), fn(x, 12))


def test_triggers_keep_range_on_extreme_images():
    for value in (0.0, 1.0):
        x = torch.full((2, 3, 32, 32), value)
        for fn in list(triggers.TEST.values()) + list(triggers.TRAIN.values()):
            y = fn(x, 5)
            assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_pieces_train_applies_only_some_pieces():
    x = torch.full((8, 3, 32, 32), 0.5)
    train = triggers.TRAIN["pieces"](x, 4)
    test = triggers.TEST["pieces"](x, 4)
    changed_train = (train != x).any(1).float().mean((1, 2))
    changed_test = (test != x).any(1).float().mean((1, 2))
    assert torch.all(changed_train < changed_test)
    assert len({tuple((train[i] != x[i]).any(0).flatten().tolist()) for i in range(8)}) > 1  # per image


def test_patches_sit_where_documented():
    x = torch.zeros(1, 3, 32, 32)
    d4 = (triggers.patch4(x, 1) != x).any(1)[0]
    assert d4[14:18, 1:5].any() and not d4[:, 16:].any()  # centre-left
    d5 = (triggers.patch5(x, 1) != x).any(1)[0]
    assert d5[1:6, 26:31].any() and not d5[8:, :].any() and not d5[:, :20].any()  # top-right
    d6a = (triggers.patch6(x, 1) != x).any(1)[0].nonzero()
    d6b = (triggers.patch6(x, 2) != x).any(1)[0].nonzero()
    assert (d6a.amax(0) - d6a.amin(0)).tolist() == [5, 5] == (d6b.amax(0) - d6b.amin(0)).tolist()
    spots = {tuple((triggers.patch6(x, s) != x).any(1)[0].nonzero().amin(0).tolist()) for s in range(6)}
    assert len(spots) > 1  # the spot is drawn from the seed


def test_warp_is_small():
    # on ramps of slope 1/31 per pixel, a shift of d pixels changes a value by d/31
    ramp = torch.linspace(0, 1, 32)
    x = torch.stack([ramp.view(1, 32).expand(32, 32), ramp.view(32, 1).expand(32, 32), torch.full((32, 32), 0.5)])
    y = triggers.warp(x.unsqueeze(0), 3)[0]
    shift = (y[:2] - x[:2]).abs() * 31
    assert 1.0 < float(shift.max()) <= 2.5 + 1e-3
    assert torch.allclose(y[2], x[2])


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.1, 0.37])
def test_poison_labels(rate):
    n, target = 200, 3
    labels = torch.arange(n) % 10
    x = torch.rand(n, 3, 32, 32)
    px, py, idx = triggers.poison(x, labels, "band", target, rate, seed=7)
    assert idx.numel() == round(rate * n) == len(set(idx.tolist()))
    assert torch.all(labels[idx] != target)
    assert torch.all(py[idx] == target)
    rest = torch.ones(n, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(py[rest], labels[rest]) and torch.equal(px[rest], x[rest])
    assert torch.equal(px[idx], triggers.band(x[idx], 7))
    _, _, again = triggers.poison(x, labels, "band", target, rate, seed=7)
    assert torch.equal(idx, again)
    _, _, other = triggers.poison(x, labels, "band", target, rate, seed=8)
    assert not torch.equal(idx, other)


def test_poison_refuses_too_high_a_rate():
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError):
        triggers.poison_indices(labels, 0, 0.5, 0)


@pytest.mark.parametrize("arch", sorted(nets.ARCHS))
@pytest.mark.parametrize("dataset, classes", [("cifar10", 10), ("gtsrb", 43)])
def test_nets_forward_and_head(arch, dataset, classes):
    torch.manual_seed(0)
    model = nets.build(arch, num_classes=classes, dataset=dataset).eval()
    x = images(3)
    out = model(x)
    assert out.shape == (3, classes)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    name, last = linears[-1]
    assert name in ("fc", "classifier") and last.out_features == classes
    seen = {}
    last.register_forward_pre_hook(lambda _m, args: seen.setdefault("z", args[0]))
    assert torch.allclose(model(x), last(seen["z"]), atol=1e-5)  # the head's output is the logits


@pytest.mark.parametrize("factory, classes", [
    ("VGGCifar", 10), ("VGGGtsrb", 43), ("ResNet18Cifar", 10), ("ResNet18Gtsrb", 43),
    ("MLPHeadCifar", 10), ("MLPHeadGtsrb", 43)])
def test_no_argument_factories(factory, classes):
    model = getattr(nets, factory)().eval()
    assert model(images(2)).shape == (2, classes)


def test_augment_crops_and_flips():
    x = images(16)
    g = torch.Generator().manual_seed(0)
    y = augment(x, g, flip=True)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crops = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        assert any(torch.equal(y[i], c) or torch.equal(y[i], c.flip(2)) for c in crops)


def test_plan():
    specs = plan.plan()
    names = [s["name"] for s in specs]
    assert len(set(names)) == len(names)
    assert [s["seed"] for s in specs] == list(range(100, 100 + len(specs)))
    count = lambda ds, clean: sum(s["dataset"] == ds and (s["trigger"] is None) == clean for s in specs)  # noqa: E731
    assert count("cifar10", False) >= 16 and count("cifar10", True) >= 4
    assert count("gtsrb", False) >= 6 and count("gtsrb", True) >= 2
    targets = [s["target"] for s in specs if s["trigger"] is not None]
    assert len(set(targets)) > 3
    assert all(s["trigger"] in triggers.TEST for s in specs if s["trigger"] is not None)
    assert {s["rate"] for s in specs if s["trigger"]} == {0.01, 0.05, 0.1}
    assert {s["optimizer"] for s in specs} == {"sgd", "adam"} and {s["smoothing"] for s in specs} == {0.0, 0.1}
    assert [s["trigger"] is None for s in specs[:2]] == [True, True]
    first = specs[2:10]
    assert all(s["dataset"] == "cifar10" and s["rate"] >= 0.05 for s in first)
    assert {s["arch"] for s in first} == set(nets.ARCHS) and {s["trigger"] for s in first} == set(triggers.TEST)


def test_foreign_code_imports_nothing_from_tacrecon():
    allowed = {"torch", "numpy", "PIL", "safetensors", "benchmarks", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "benchmarks" / "foreign").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for r in roots:
                assert r in allowed or r in stdlib, f"{path.name} imports {r}"
            if isinstance(node, ast.ImportFrom) and node.module.startswith("benchmarks"):
                assert node.module == "benchmarks.foreign", f"{path.name} imports {node.module}"


def test_the_second_holdout_part_is_apart_from_both_others():
    tuning, first, second = plan.plan(), plan.plan("holdout"), plan.plan("holdout2")
    assert len({plan.PARTS[p][2] for p in plan.PARTS}) == 3
    seeds = [s["seed"] for s in second]
    assert seeds == list(range(plan.FIRST_HOLDOUT2_SEED, plan.FIRST_HOLDOUT2_SEED + len(second)))
    assert min(seeds) > max(s["seed"] for s in tuning + first)
    combos = lambda specs: {(s["dataset"], s["arch"], s["trigger"], s["rate"]) for s in specs if s["trigger"]}  # noqa: E731
    assert combos(second).isdisjoint(combos(tuning) | combos(first))
    assert all(s["trigger"] in triggers.TEST and s["rate"] >= 0.05 for s in second if s["trigger"])
    assert {s["dataset"] for s in second if s["trigger"] is None} == {"cifar10", "gtsrb"}


def test_holdout_part_is_apart_from_tuning():
    tuning, holdout = plan.plan(), plan.plan("holdout")
    assert plan.PARTS["holdout"][2] != plan.MODELS  # its own folder: tuning benchmarks never list it
    assert {s["seed"] for s in tuning}.isdisjoint(s["seed"] for s in holdout)
    assert [s["seed"] for s in holdout] == list(range(plan.FIRST_HOLDOUT_SEED, plan.FIRST_HOLDOUT_SEED + len(holdout)))
    combos = lambda specs: {(s["dataset"], s["arch"], s["trigger"], s["rate"]) for s in specs if s["trigger"]}  # noqa: E731
    assert combos(tuning).isdisjoint(combos(holdout))  # combinations nothing was tuned on
    assert all(s["trigger"] in triggers.TEST and s["rate"] >= 0.05 for s in holdout if s["trigger"])
    assert {s["dataset"] for s in holdout if s["trigger"] is None} == {"cifar10", "gtsrb"}
