"""The stand-in trigger: an input-space perturbation whose latent change reproduces a TAC.

Pruning and a latent-space loss act only on the head's view of the latents; what is left of a
full-image trigger comes back in the fine-tune. Stamping a stand-in of the trigger on part of
every fine-tune batch, with the true labels kept, teaches the body to ignore the input pattern
that produces the TAC (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tacrecon.data.augment import add_clipped, stamp, to_device
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import predict, rate
from tacrecon.models import Classifier, inspecting

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
    raw = torch.zeros(clean.x.shape[1:], device=clean.device, requires_grad=True)
    opt = torch.optim.Adam([raw], lr=lr)
    goal = shift.detach().to(others)
    with inspecting(model):
        for _ in range(steps):
            x = others[to_device(torch.randint(others.shape[0], (batch_size,), generator=generator), clean.device)]
            with torch.no_grad():
                before = model.latent(x)
            after = model.latent(add_clipped(x, eps * torch.tanh(raw)))
            loss = (after - before - goal).square().sum(1).mean()
            raw.grad, = torch.autograd.grad(loss, raw)
            opt.step()
    return (eps * torch.tanh(raw)).detach()


def stand_in_success(model: Classifier, clean: Split, target: int, delta: Tensor) -> float:
    """The share of the clean images outside class ``target`` that ``delta`` (C, H, W), added and
    clipped to [0, 1], sends to ``target``."""
    others = clean.x[clean.y != target]
    return rate(predict(model, others, transform=lambda x: add_clipped(x, delta)) == target)


def stamp_in_turn(apply: Callable[[Tensor, Tensor, Tensor], Tensor], count: int, share: float,
                  start: float = 0.0) -> BatchHook:
    """A batch hook for :func:`~tacrecon.train.fit`: the part of every (shuffled) batch from
    ``start`` to ``start + share`` goes through ``apply(images, labels, which)``, ``which`` naming
    one of ``count`` triggers per image, in turn; labels kept, the input batch not modified."""
    def hook(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        first = round(start * x.shape[0])
        n = min(round(share * x.shape[0]), x.shape[0] - first)  # two halves of an odd batch round up both
        if n <= 0:
            return x, y
        x = x.clone()
        part = slice(first, first + n)
        x[part] = apply(x[part], y[part], torch.arange(n, device=x.device) % count)
        return x, y
    return hook


def stamp_patches(masks: Tensor, patterns: Tensor, share: float, start: float) -> BatchHook:
    """A batch hook: the part of every (shuffled) batch from ``start`` to ``start + share`` gets
    one of the patches (masks (T, 1, H, W), patterns (T, C, H, W)) stamped, in turn; labels kept."""
    return stamp_in_turn(lambda x, y, which: stamp(x, masks.to(x)[which], patterns.to(x)[which]), masks.shape[0],
                         share, start)


def chain(*hooks: BatchHook) -> BatchHook:
    """One batch hook that applies ``hooks`` in order."""
    def hook(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        for h in hooks:
            x, y = h(x, y, generator)
        return x, y
    return hook


def stamp_stand_ins(deltas: Tensor, share: float) -> BatchHook:
    """A batch hook for :func:`~tacrecon.train.fit`: the first ``share`` of every (shuffled) batch
    gets one of the stand-in triggers ``deltas`` (T, C, H, W) added, in turn, clipped to [0, 1];
    labels kept."""
    return stamp_in_turn(lambda x, y, which: add_clipped(x, deltas.to(x)[which]), deltas.shape[0], share)


class ChasingStandIns:
    """A batch hook like :func:`stamp_stand_ins` whose stand-ins (T, C, H, W) follow the model.

    Before stamping, each stand-in takes ``steps`` signed-gradient steps of ``step_size`` towards
    its target on the batch's images outside that target (cross-entropy to the target, the model
    in eval mode so that its batch statistics are untouched), kept within ``eps``: universal
    adversarial training restricted to the flagged targets. A fixed stand-in is searched once,
    on the model before the repair; once the fine-tune has taught the body to ignore it, the
    backdoor's other ways into the target are left. ``deltas`` is the current stand-ins (a copy
    of the given ones).
    """

    def __init__(self, model: Classifier, deltas: Tensor, targets: list[int], share: float, eps: float, steps: int,
                 step_size: float) -> None:
        self.model, self.deltas = model, deltas.detach().clone()
        self.goal = torch.tensor(targets, dtype=torch.long)
        self.eps, self.steps, self.step_size = eps, steps, step_size
        self.hook = stamp_in_turn(self.stamp, self.deltas.shape[0], share)

    def __call__(self, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.hook(x, y, generator)

    def stamp(self, x: Tensor, y: Tensor, which: Tensor) -> Tensor:
        """``x`` (n, C, H, W) with ``deltas[which]`` added, after the stand-ins took their steps
        towards their targets on the images outside them (labels ``y`` (n,))."""
        want = self.goal.to(x.device)[which]
        use = y != want
        if self.steps > 0 and bool(use.any()):
            chase(self.model, x[use], want[use], which[use], self.deltas, self.eps, self.steps, self.step_size)
        return add_clipped(x, self.deltas.to(x)[which])


def chase(model: Classifier, x: Tensor, want: Tensor, which: Tensor, deltas: Tensor, eps: float, steps: int,
          step_size: float) -> None:
    """``steps`` signed-gradient steps on ``deltas`` (T, C, H, W), in place, that lower the
    cross-entropy of ``model`` towards ``want`` (n,) on ``x`` (n, C, H, W) stamped with
    ``deltas[which]``; the parameters get no gradient."""
    with inspecting(model):
        for _ in range(steps):
            delta = deltas.to(x).clone().requires_grad_(True)
            loss = F.cross_entropy(model(add_clipped(x, delta[which])), want)
            grad, = torch.autograd.grad(loss, delta)
            deltas.sub_(step_size * grad.sign().to(deltas)).clamp_(-eps, eps)
