"""Named training recipes: the settings that the protocols in docs/benchmarks.md fix.

A recipe is a :class:`TrainConfig` plus the model keyword arguments, per dataset. The CPU
protocol recipe for cifar10 and gtsrb is measured in ``benchmarks/train_throughput.py`` and
``benchmarks/cpu_recipe.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tacrecon.data.split import Dataset
from tacrecon.errors import TacreconError
from tacrecon.models import create_model
from tacrecon.train import TrainConfig

# Per data set, what differs from TrainConfig's defaults. As in BackdoorBench, only CIFAR-10 is
# flipped: mirrored digits and traffic signs change meaning. The 8 x 8 digits get a smaller
# random-crop shift (2 px is already 1/4 of the side), and a shorter, smaller-batch run.
DATASET_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": {"flip": True, "crop_padding": 4},
    "digits": {"flip": False, "crop_padding": 2, "epochs": 15, "batch_size": 64, "lr": 0.05},
}
OTHER_DATASETS: dict[str, Any] = {"flip": False, "crop_padding": 4}

# Per architecture, keyword arguments of the recipe (the CPU protocol's resnet_small has width 16).
ARCH_RECIPES: dict[str, dict[str, Any]] = {"resnet_small": {"width": 16}}


def default_train_config(dataset: str, **overrides: Any) -> TrainConfig:
    """The recipe's :class:`TrainConfig` for ``dataset``, with ``overrides`` applied."""
    return TrainConfig.from_dict({**DATASET_RECIPES.get(dataset, OTHER_DATASETS), **overrides})


MIN_SIDE = {"vgg11_bn": 32}  # five 2x2 max-pools


def model_kwargs(arch: str, dataset: Dataset, **overrides: Any) -> dict[str, Any]:
    """All keyword arguments that build ``arch`` for ``dataset`` (saved in checkpoints).

    Includes the class count, channels and normalization of ``dataset`` and the recipe's extras
    (the CPU protocol's ``resnet_small`` has width 16).
    """
    side = min(dataset.input_shape[1:])
    if side < MIN_SIDE.get(arch, 1):
        raise TacreconError(f"{arch} needs images of at least {MIN_SIDE[arch]}x{MIN_SIDE[arch]} (its pooling), "
                            f"{dataset.name}'s are {side}x{side}")
    extra = ARCH_RECIPES.get(arch, {})
    return {"num_classes": dataset.num_classes, "in_chans": dataset.input_shape[0],
            "mean": list(dataset.mean), "std": list(dataset.std), **extra, **overrides}


def build_model(arch: str, kwargs: dict[str, Any], seed: int = 0) -> nn.Module:
    """A freshly initialised ``arch`` built with ``kwargs`` (see :func:`model_kwargs`).

    The initialisation draws from a private RNG seeded with ``seed``; the global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(arch, **kwargs)
