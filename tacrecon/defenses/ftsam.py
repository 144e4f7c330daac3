"""FT-SAM: fine-tuning with sharpness-aware minimization (adaptive SAM) on the clean set.

Zhu et al. 2023, "Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware Minimization".
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES
from tacrecon.defenses.finetune import FinetuneDefense
from tacrecon.errors import TacreconError
from tacrecon.train import LossFn, fit


def smoothed_cross_entropy(logits: Tensor, y: Tensor, smoothing: float) -> Tensor:
    """Cross-entropy against soft labels: 1 - ``smoothing`` on the true class, ``smoothing``
    spread evenly over the C - 1 others (BackdoorBench FT-SAM's form; PyTorch's
    ``label_smoothing`` spreads it over all C). ``logits`` (N, C), ``y`` (N,)."""
    log_p = F.log_softmax(logits.float(), dim=1)
    target = torch.full_like(log_p, smoothing / max(logits.shape[1] - 1, 1))
    target.scatter_(1, y[:, None], 1 - smoothing)
    return -(target * log_p).sum(1).mean()


@torch.no_grad()
def sam_perturbation(params: list[nn.Parameter], rho: float, adaptive: bool, eps: float = 1e-12) -> list[Tensor]:
    """SAM's ascent step e (one tensor per parameter with a gradient, zeros for the others).

    Plain: e = rho * g / ||g|| (the norm over all parameters together), so ||e|| = rho.
    Adaptive (ASAM without its eta, as BackdoorBench): e = rho * w^2 g / || |w| g ||, so the
    rescaled step e / |w| has norm rho.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    scaled = [(p.abs() * g if adaptive else g) for p, g in zip(params, grads)]
    norm = torch.norm(torch.stack([s.norm(2) for s in scaled]), 2)
    scale = rho / (norm + eps)
    return [(g * p.pow(2) if adaptive else g) * scale for p, g in zip(params, grads)]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm layers keep using batch statistics but stop updating their running ones
    (momentum 0, batch count restored) inside the block: SAM's second pass must not count the
    batch twice."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _checked_backward(loss: Tensor) -> None:
    if not torch.isfinite(loss):
        raise TacreconError(f"training diverged (loss {float(loss)}); lower the learning rate")
    loss.backward()


def sam_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, x: Tensor, y: Tensor,
             rho: float, adaptive: bool, amp: bool) -> Tensor:
    """One SAM step: gradient at w, ascend to w + e (:func:`sam_perturbation`), gradient there
    (running BN statistics untouched), back to w, base optimizer step with the second
    gradient. Returns the detached loss at w."""
    params = [p for group in opt.param_groups for p in group["params"]]
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.is_cuda)  # noqa: E731
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = loss_fn(model, x, y)
    _checked_backward(loss)
    e = sam_perturbation(params, rho, adaptive)
    with torch.no_grad():
        for p, step in zip(params, e):
            p.add_(step)
    opt.zero_grad(set_to_none=True)
    with frozen_bn_stats(model):
        with autocast():
            perturbed = loss_fn(model, x, y)
        _checked_backward(perturbed)
    with torch.no_grad():
        for p, step in zip(params, e):
            p.sub_(step)
    opt.step()
    return loss.detach()


@DEFENSES.register("ftsam")
@dataclass
class FTSAM(FinetuneDefense):
    """FT-SAM as BackdoorBench runs it (``defense/ft-sam.py``, ``config/defense/ft-sam``):
    fine-tune every weight on the clean set with adaptive SAM and label smoothing.

    Args:
        rho: SAM's neighbourhood radius (BB: rho_max = rho_min = 2.0, so constant).
        adaptive: the adaptive (ASAM) perturbation, scaled by |w| (BB's default, True).
        label_smoothing: mass moved from the true class to the others (BB: 0.1).
        (the fine-tune fields: :class:`FinetuneDefense`).

    Deviations from BackdoorBench: BB draws a class-balanced clean set (250 per class); here the
    defender's clean set is used as given. BB steps its cosine schedule (T_max 100) once per
    *batch*, which makes the learning rate oscillate with a period of 200 batches; here it
    decays once over the run, as in every other fine-tune. BB's gradient decomposition has
    alpha 0 (a no-op) and is left out. Weight decay, as in every tacrecon fine-tune, spares
    biases and norm weights.

    The published recipe (the defaults): 100 epochs, batch 256, SGD lr 0.01 momentum 0.9 wd
    5e-4, adaptive SAM rho 2.0, label smoothing 0.1, crop augmentation. CPU budget: 20 epochs
    (each step costs two forward/backward passes: as much compute as 40 epochs of FT, about
    80 s for resnet_small on 2 cores).
    """

    paper: ClassVar[str] = ("Zhu et al. 2023, Enhancing Fine-Tuning Based Backdoor Defense with Sharpness-Aware "
                             "Minimization, https://arxiv.org/abs/2304.11823")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {"epochs": 20}, "smoke": {"epochs": 1}}

    rho: float = 2.0
    adaptive: bool = True
    label_smoothing: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.rho < 0:
            raise TacreconError(f"FTSAM: rho must be >= 0, got {self.rho}")
        if not 0 <= self.label_smoothing < 1:
            raise TacreconError(f"FTSAM: label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        smoothing = self.label_smoothing
        loss = lambda m, x, y: smoothed_cross_entropy(m(x), y, smoothing)  # noqa: E731
        step = functools.partial(sam_step, rho=self.rho, adaptive=self.adaptive)
        self.stats_["losses"] = fit(model, clean, self.train_config(clean), generator=generator, loss_fn=loss,
                                    step_fn=step, desc=f"{self.name} fine-tune")
