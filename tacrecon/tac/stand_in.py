"""The stand-in trigger: an input-space perturbation whose latent change reproduces a TAC.

Pruning and a latent-space loss act only on the head's view of the latents; what is left of a
full-image trigger comes back in the fine-tune. Stamping a stand-in of the trigger on part of
every fine-tune batch, with the true labels kept, teaches the body to ignore the input pattern
that produces the TAC (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tacrecon.data.augment import add_clipped
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import predict, rate
from tacrecon.models import Classifier

BatchHook = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


def search_stand_in(model: Classifier, clean: Split, target: int, shift: Tensor, eps: float, steps: int = 150,
                    batch_size: int = 128, lr: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """The stand-in trigger of ``target``: an input-space perturbation guided by its TAC.

    The universal perturbation delta (C, H, W), |delta| <= ``eps`` everywhere, whose latent change
    z(clip(x + delta)) - z(x) best reproduces ``shift`` (d,), s_t, on the clean images of the other
    classes (mean squared error, Adam on delta = eps * tanh(raw), ``steps`` batches of
    ``batch_size``). ``model`` is used in eval mode and not modified.
    """
    others = clean.x[clean.y != target]
    if others.shape[0] == 0:
        raise TacreconError(f"the clean set has no image outside class {target} to search a stand-in trigger on")
    generator = generator or torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    raw = torch.zeros(clean.x.shape[1:], device=clean.device, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr)
    goal = shift.detach().to(others)
    for _ in range(steps):
        x = others[torch.randint(others.shape[0], (batch_size,), generator=generator).to(clean.device)]
        with torch.no_grad():
            before = model.latent(x)
        after = model.latent(add_clipped(x, eps * torch.tanh(raw)))
        loss = (after - before - goal).square().sum(1).mean()
        raw.grad, = torch.autograd.grad(loss, raw)
        opt.step()
    model.train(was_training)
    return (eps * torch.tanh(raw)).detach()


def stand_in_success(model: Classifier, clean: Split, target: int, delta: Tensor) -> float:
    """The share of the clean images outside class ``target`` that ``delta`` (C, H, W), added and
    clipped to [0, 1], sends to ``target``."""
    others = clean.x[clean.y != target]
    return rate(predict(model, others, transform=lambda x: add_clipped(x, delta)) == target)


def stamp_stand_ins(deltas: Tensor, share: float) -> BatchHook:
    """A batch hook for :func:`~tacrecon.train.fit`: the first ``share`` of every (shuffled) batch
    gets one of the stand-in triggers ``deltas`` (T, C, H, W) added, in turn, clipped to [0, 1];
    labels kept."""
    def hook(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = round(share * x.shape[0])
        if n == 0:
            return x, y
        x = x.clone()
        which = torch.arange(n, device=x.device) % deltas.shape[0]
        x[:n] = add_clipped(x[:n], deltas.to(x)[which])
        return x, y
    return hook
