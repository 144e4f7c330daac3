"""The model contract shared by every classifier in tacrecon (timm style).

Every model takes images in [0, 1] and normalizes them in its first layer. Its *latent* is the
input of the final linear layer, the space in which TAC solves its per-class QP:

    f = model.forward_features(x)              # (N, ...) backbone output
    z = model.forward_head(f, pre_logits=True)  # (N, d) latent
    logits = model.get_classifier()(z)          # (N, C)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import Tensor, nn

from tacrecon.errors import TacreconError


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; the statistics are not saved in the state_dict.

    Keeping them out of the state_dict lets weights from other toolkits (which normalize in their
    data pipeline) load strictly into our architectures.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise TacreconError(f"bad normalization mean={list(mean)} std={list(std)}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def default_stats(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None):
    """Normalization statistics, defaulting to 0.5 / 0.5 per channel."""
    mean = tuple(mean) if mean is not None else (0.5,) * in_chans
    std = tuple(std) if std is not None else (0.5,) * in_chans
    if len(mean) != in_chans or len(std) != in_chans:
        raise TacreconError(f"mean/std need {in_chans} values, got {len(mean)} and {len(std)}")
    return mean, std


class Classifier(nn.Module):
    """Base class: subclasses build ``self.normalize`` and implement the three hooks below.

    Attributes:
        num_classes: C, the number of logits.
        latent_dim: d, the width of the latent (input of the final linear layer).
    """

    num_classes: int
    latent_dim: int

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (N, C_in, H, W) in [0, 1] -> backbone output (N, ...)."""
        raise NotImplementedError

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        """Backbone output -> latent (N, d) if ``pre_logits`` else logits (N, C)."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:
        """The final linear layer h(z) = W z + b, W of shape (C, d)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Images (N, C_in, H, W) in [0, 1] -> logits (N, C)."""
        return self.forward_head(self.forward_features(x))

    def latent(self, x: Tensor) -> Tensor:
        """Images (N, C_in, H, W) in [0, 1] -> latent (N, d)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


@torch.no_grad()
def latents_of(model: Classifier, x: Tensor, batch_size: int = 512) -> Tensor:
    """Latents (N, d) of images ``x`` (N, C, H, W): one forward pass in eval mode."""
    with evaluating(model):
        return torch.cat([model.latent(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, its train/eval mode given back on exit (an exception included)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def inspecting(model: Classifier) -> Iterator[Classifier]:
    """``model`` in eval mode with its parameters' gradients off, both given back on exit."""
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with evaluating(model):
            yield model
    finally:
        for p, grad in zip(model.parameters(), grads):
            p.requires_grad_(grad)
