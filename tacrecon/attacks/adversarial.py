"""What the attacks built on adversarial examples share (LC, Grond): a clean surrogate model
trained with the one training loop, L-infinity PGD, and a targeted universal perturbation.

Nothing here is registered: the attacks that use these pieces live in their own files.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.data.augment import add_clipped
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import predict, rate
from tacrecon.recipes import build_model, default_train_config, model_kwargs
from tacrecon.train import fit

log = logging.getLogger(__name__)


@dataclass
class SurrogatePlan:
    """How to build the attacker's surrogate for one dataset: ``arch`` built with ``kwargs``
    (see :func:`~tacrecon.recipes.model_kwargs`), trained with the recipe of ``dataset``."""

    arch: str
    kwargs: dict[str, Any]
    dataset: str

    @classmethod
    def of(cls, arch: str, data: Dataset) -> SurrogatePlan:
        return cls(arch, model_kwargs(arch, data), data.name)


def train_surrogate(plan: SurrogatePlan | None, train: Split, epochs: int, generator: torch.Generator) -> nn.Module:
    """A clean ``plan.arch`` trained on ``train`` for ``epochs`` epochs of the dataset's recipe, in
    eval mode on ``train.device``. Its seed (initialisation and batch order) is drawn from ``generator``."""
    if plan is None:
        raise TacreconError("the attack has no surrogate plan: call setup(data, generator) first")
    seed = int(torch.randint(2**62, (1,), generator=generator))
    model = build_model(plan.arch, plan.kwargs, seed).to(train.device)
    cfg = default_train_config(plan.dataset, epochs=epochs)
    fit(model, train, cfg, generator=torch.Generator().manual_seed(seed), desc=f"surrogate {plan.arch}")
    return model.eval()


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int,
        batch_size: int = 256) -> Tensor:
    """Untargeted L-infinity PGD from ``x`` (no random start): ``steps`` signed-gradient ascent
    steps of ``step_size`` on the cross-entropy of the true labels ``y``, each followed by the
    projection onto ``|x' - x| <= eps`` and ``[0, 1]``. ``model`` is put in eval mode.

    Shape:
        x (N, C, H, W) in [0, 1], y (N,) -> (N, C, H, W) in [0, 1].
    """
    model.eval()
    with torch.enable_grad():
        parts = [_pgd_batch(model, xb, yb, eps, step_size, steps)
                 for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(parts) if parts else x.clone()


def _pgd_batch(model: nn.Module, x: Tensor, y: Tensor, eps: float, step_size: float, steps: int) -> Tensor:
    adv = x.detach().clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
        adv = add_clipped(x, (adv.detach() + step_size * grad.sign() - x).clamp(-eps, eps))
    return adv.detach()


def targeted_uap(model: nn.Module, x: Tensor, target: int, eps: float, step_size: float, steps: int,
                 batch_size: int, generator: torch.Generator) -> Tensor:
    """A targeted universal perturbation: one ``delta`` with ``|delta| <= eps`` that sends the
    images of ``x`` to ``target``. From ``delta = 0``, each of ``steps`` steps takes the next batch
    of a random order of ``x`` (a fresh order on each pass) and descends the cross-entropy of
    ``model(clamp(x + delta, 0, 1))`` towards ``target`` by a signed step of ``step_size``, then
    clips ``delta`` to ``[-eps, eps]``. ``model`` is put in eval mode.

    Shape:
        x (N, C, H, W) in [0, 1] -> delta (C, H, W) in [-eps, eps].
    """
    model.eval()
    delta = torch.zeros(1, *x.shape[1:], device=x.device, dtype=x.dtype)
    per_pass = math.ceil(x.shape[0] / batch_size)
    order = torch.empty(0, dtype=torch.long)
    with torch.enable_grad():
        for step in range(steps):
            if step % per_pass == 0:
                order = torch.randperm(x.shape[0], generator=generator)
            batch = x[order[(step % per_pass) * batch_size:(step % per_pass + 1) * batch_size].to(x.device)]
            delta.requires_grad_(True)
            labels = torch.full((batch.shape[0],), target, dtype=torch.long, device=x.device)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(add_clipped(batch, delta)), labels), delta)
            delta = (delta.detach() - step_size * grad.sign()).clamp(-eps, eps)
    return delta[0].detach()


def fooling_rate(model: nn.Module, x: Tensor, target: int) -> float:
    """Fraction of the images ``x`` (N, C, H, W) that ``model`` classifies as ``target`` (0 for none)."""
    return rate(predict(model, x) == target) if x.shape[0] else 0.0
