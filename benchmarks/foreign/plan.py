"""The foreign family: which models to train, in the order to train them.

Seeds run from 100 up, one per model; each backdoored model's target class is drawn from its
seed with ``random.Random(seed)``. The order puts the most useful models first, since CPU time
is short: two clean CIFAR-10 models, eight backdoored CIFAR-10 models at 5-10% covering the
three architectures and all eight triggers, two backdoored and one clean GTSRB model, then the
rest (1% rates, more clean models, the remaining GTSRB models), then six more clean models for
the detection thresholds. In all: 16 backdoored + 7 clean CIFAR-10 models, 6 backdoored + 5 clean
GTSRB models.

A second part, ``holdout`` (seeds 134 and up, folder ``holdout/``), is kept out of every tuning
benchmark: it is read once per TAC revision, after the revision is chosen on the tuning part, to
check that the choice holds on models nothing was chosen on. Its rows mix the same architectures,
triggers and recipes in combinations the tuning part does not have. It was read with revision 7;
a later revision is read on a fresh part, ``holdout2`` (seeds 146 and up, folder ``holdout2/``),
whose combinations neither earlier part has.

``python benchmarks/foreign/plan.py [holdout|holdout2]`` prints the plan.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

MODELS = Path(__file__).resolve().parent / "models"
HOLDOUT = Path(__file__).resolve().parent / "holdout"
HOLDOUT2 = Path(__file__).resolve().parent / "holdout2"
EPOCHS = {"cifar10": 12, "gtsrb": 10}
NUM_CLASSES = {"cifar10": 10, "gtsrb": 43}

# (dataset, arch, trigger or None for a clean model, rate, optimizer, label smoothing), in order.
ROWS: list[tuple[str, str, str | None, float, str, float]] = [
    # 1. clean CIFAR-10
    ("cifar10", "vgg", None, 0.0, "sgd", 0.0),
    ("cifar10", "resnet18", None, 0.0, "adam", 0.1),
    # 2. backdoored CIFAR-10 at 5-10%: every architecture and every trigger
    ("cifar10", "vgg", "patch4", 0.10, "sgd", 0.0),
    ("cifar10", "resnet18", "band", 0.05, "adam", 0.0),
    ("cifar10", "mlphead", "noise", 0.10, "sgd", 0.1),
    ("cifar10", "vgg", "warp", 0.10, "adam", 0.1),
    ("cifar10", "resnet18", "pieces", 0.10, "sgd", 0.0),
    ("cifar10", "mlphead", "cast", 0.05, "adam", 0.0),
    ("cifar10", "resnet18", "patch5", 0.05, "sgd", 0.1),
    ("cifar10", "vgg", "patch6", 0.05, "sgd", 0.1),
    # 3. GTSRB: two backdoored, one clean
    ("gtsrb", "resnet18", "band", 0.05, "sgd", 0.0),
    ("gtsrb", "mlphead", "noise", 0.10, "adam", 0.1),
    ("gtsrb", "vgg", None, 0.0, "sgd", 0.1),
    # 4. the rest: 1% rates, more clean models, the remaining GTSRB models
    ("cifar10", "mlphead", "patch6", 0.01, "sgd", 0.0),
    ("cifar10", "vgg", "band", 0.01, "adam", 0.1),
    ("cifar10", "mlphead", None, 0.0, "sgd", 0.1),
    ("cifar10", "resnet18", "cast", 0.10, "sgd", 0.0),
    ("cifar10", "mlphead", "warp", 0.10, "sgd", 0.1),
    ("cifar10", "vgg", "pieces", 0.05, "adam", 0.1),
    ("cifar10", "resnet18", "patch4", 0.01, "adam", 0.0),
    ("cifar10", "vgg", None, 0.0, "adam", 0.0),
    ("cifar10", "mlphead", "patch5", 0.10, "adam", 0.1),
    ("cifar10", "resnet18", "noise", 0.05, "sgd", 0.1),
    ("gtsrb", "vgg", "patch6", 0.10, "sgd", 0.0),
    ("gtsrb", "resnet18", "warp", 0.10, "adam", 0.0),
    ("gtsrb", "mlphead", "pieces", 0.05, "sgd", 0.1),
    ("gtsrb", "vgg", "cast", 0.01, "adam", 0.0),
    ("gtsrb", "resnet18", None, 0.0, "adam", 0.1),
    # 5. more clean models, so that a detection threshold rests on more than the worst of 8
    ("cifar10", "mlphead", None, 0.0, "adam", 0.0),
    ("gtsrb", "mlphead", None, 0.0, "sgd", 0.0),
    ("cifar10", "resnet18", None, 0.0, "sgd", 0.0),
    ("gtsrb", "vgg", None, 0.0, "adam", 0.1),
    ("cifar10", "vgg", None, 0.0, "sgd", 0.1),
    ("gtsrb", "resnet18", None, 0.0, "sgd", 0.0),
]
FIRST_SEED = 100

# the held-out part: backdoored at 5-10% (8 CIFAR-10, 2 GTSRB) and one clean model per data set
HOLDOUT_ROWS: list[tuple[str, str, str | None, float, str, float]] = [
    ("cifar10", "mlphead", "band", 0.10, "adam", 0.0),
    ("cifar10", "vgg", "cast", 0.10, "sgd", 0.1),
    ("cifar10", "resnet18", "warp", 0.10, "sgd", 0.1),
    ("cifar10", "mlphead", "pieces", 0.05, "sgd", 0.0),
    ("cifar10", "vgg", "noise", 0.05, "adam", 0.0),
    ("cifar10", "resnet18", "patch6", 0.10, "adam", 0.1),
    ("cifar10", "mlphead", "patch4", 0.05, "adam", 0.1),
    ("cifar10", "vgg", "patch5", 0.10, "sgd", 0.0),
    ("gtsrb", "vgg", "band", 0.10, "adam", 0.1),
    ("gtsrb", "mlphead", "warp", 0.10, "sgd", 0.0),
    ("cifar10", "resnet18", None, 0.0, "sgd", 0.1),
    ("gtsrb", "mlphead", None, 0.0, "adam", 0.1),
]
FIRST_HOLDOUT_SEED = 134

# the second held-out part, for the revision after 7: the same shape, combinations (data set,
# architecture, trigger, rate) that neither the tuning part nor the first held-out part has
HOLDOUT2_ROWS: list[tuple[str, str, str | None, float, str, float]] = [
    ("cifar10", "vgg", "patch4", 0.05, "adam", 0.0),
    ("cifar10", "resnet18", "band", 0.10, "sgd", 0.1),
    ("cifar10", "mlphead", "noise", 0.05, "adam", 0.1),
    ("cifar10", "vgg", "warp", 0.05, "sgd", 0.0),
    ("cifar10", "resnet18", "pieces", 0.05, "adam", 0.1),
    ("cifar10", "mlphead", "cast", 0.10, "sgd", 0.1),
    ("cifar10", "resnet18", "cast", 0.05, "adam", 0.0),
    ("cifar10", "mlphead", "warp", 0.05, "adam", 0.0),
    ("gtsrb", "resnet18", "patch5", 0.10, "sgd", 0.1),
    ("gtsrb", "vgg", "noise", 0.05, "sgd", 0.0),
    ("cifar10", "mlphead", None, 0.0, "adam", 0.1),
    ("gtsrb", "vgg", None, 0.0, "sgd", 0.0),
]
FIRST_HOLDOUT2_SEED = 146
PARTS = {"tuning": (ROWS, FIRST_SEED, MODELS), "holdout": (HOLDOUT_ROWS, FIRST_HOLDOUT_SEED, HOLDOUT),
         "holdout2": (HOLDOUT2_ROWS, FIRST_HOLDOUT2_SEED, HOLDOUT2)}


def model_name(spec: dict[str, Any]) -> str:
    kind = "clean" if spec["trigger"] is None else f"{spec['trigger']}-r{round(spec['rate'] * 100)}"
    return f"{spec['dataset']}-{spec['arch']}-{kind}-s{spec['seed']}"


def plan(part: str = "tuning") -> list[dict[str, Any]]:
    """The specs of one part of the family (a key of :data:`PARTS`), in training order (the
    keys of ``train.train_model``'s ``spec``, plus ``name``)."""
    rows, first, _ = PARTS[part]
    specs = []
    for i, (dataset, arch, trigger, rate, optimizer, smoothing) in enumerate(rows):
        seed = first + i
        target = None if trigger is None else random.Random(seed).randrange(NUM_CLASSES[dataset])
        spec = {"dataset": dataset, "arch": arch, "trigger": trigger, "target": target, "rate": rate,
                "seed": seed, "smoothing": smoothing, "optimizer": optimizer, "epochs": EPOCHS[dataset]}
        spec["name"] = model_name(spec)
        specs.append(spec)
    return specs


if __name__ == "__main__":
    import sys
    for s in plan(sys.argv[-1] if sys.argv[-1] in PARTS else "tuning"):
        print(f"{s['name']:36s} target={s['target']!s:4s} {s['optimizer']:4s} ls={s['smoothing']} epochs={s['epochs']}")
