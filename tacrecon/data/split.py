"""In-memory splits: a split is two tensors on one device, ``x`` (N, C, H, W) in [0, 1] and ``y`` (N,)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from tacrecon.errors import TacreconError


@dataclass
class Split:
    """One split of a dataset, resident on a device.

    Attributes:
        x: images, float32 (N, C, H, W), values in [0, 1].
        y: labels, int64 (N,).
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise TacreconError(f"images must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise TacreconError(
                f"labels must be (N,) with N={self.x.shape[0]}, got shape {tuple(self.y.shape)}"
            )
        if self.x.dtype.is_floating_point is False:
            raise TacreconError(f"images must be floating point in [0, 1], got {self.x.dtype}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> "Split":
        """This split on ``device`` (no copy when already there)."""
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index: Tensor) -> "Split":
        """The samples at ``index`` (a 1-D index or boolean mask tensor)."""
        index = index.to(self.x.device)
        return Split(self.x[index], self.y[index])

    def split_off(self, fraction: float, seed: int) -> tuple["Split", "Split"]:
        """(the rest, a random ``fraction`` of the samples drawn with ``seed``); at 0 the rest is
        this split itself and the part is empty."""
        count = round(fraction * len(self))
        if count == 0:
            return self, self.subset(torch.zeros(0, dtype=torch.long))
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[count:].sort().values), self.subset(perm[:count].sort().values)

    def sample(self, n: int, generator: torch.Generator) -> tuple["Split", Tensor]:
        """``n`` samples drawn without replacement; returns the subset and its indices (N,)."""
        if not 0 < n <= len(self):
            raise TacreconError(f"cannot draw {n} samples from a split of {len(self)}")
        idx = torch.randperm(len(self), generator=generator)[:n].sort().values
        return self.subset(idx), idx


@dataclass
class Dataset:
    """A named dataset: train and test splits plus its class names and normalization stats.

    ``mean`` and ``std`` are per-channel statistics that models use in their first layer.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.classes, self.mean, self.std)


def clean_subset(train: Split, fraction: float | None, n: int | None, seed: int,
                 exclude: torch.Tensor | None = None) -> Split:
    """The defender's clean set: ``n`` samples (or ``fraction`` of ``train``) drawn with ``seed``,
    disjoint from the indices ``exclude`` (e.g. the poisoned ones)."""
    keep = torch.ones(len(train), dtype=torch.bool)
    if exclude is not None and exclude.numel():
        keep[exclude.cpu()] = False
    candidates = torch.nonzero(keep).flatten()
    if fraction is not None and not 0 < fraction <= 1:  # also NaN
        raise TacreconError(f"the clean fraction must be in (0, 1], got {fraction}")
    count = n if n is not None else round((fraction if fraction is not None else 0.05) * len(train))
    if not 0 < count <= candidates.numel():
        raise TacreconError(f"the clean set must hold 1..{candidates.numel()} samples, got {count}")
    g = torch.Generator().manual_seed(seed)
    pick = candidates[torch.randperm(candidates.numel(), generator=g)[:count]].sort().values
    return train.subset(pick)
