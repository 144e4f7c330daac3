"""ANP: Adversarial Neuron Pruning.

Wu & Wang 2021, "Adversarial Neuron Pruning Purifies Backdoored Deep Models"
(NeurIPS 2021), https://arxiv.org/abs/2110.14430.

Backdoor neurons are the ones whose small perturbation changes the output most. ANP multiplies
every BatchNorm2d channel's affine weight by (m_k + delta_k) and its bias by (1 + xi_k), where
delta, xi are adversarial noise within eps and m in [0, 1] is a learned per-channel mask; the mask
is trained so that the network stays accurate both with and without the noise. Channels whose
mask stays small are pruned (their BN weight set to 0).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from tacrecon.data.augment import augment, to_device
from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, Defense, holdout
from tacrecon.errors import TacreconError
from tacrecon.metrics import accuracy


class NeuronPerturbation:
    """Per-channel masks and multiplicative noise on every affine BatchNorm2d of a model.

    Nothing in the model is replaced: :meth:`__call__` runs it with ``torch.func.functional_call``,
    overriding each BN's weight with ``weight * (mask + noise)`` (``weight * mask`` when not
    perturbed) and its bias with ``bias * (1 + noise_bias)`` (``bias``).

    Attributes:
        names: the BN layers' qualified names.
        masks, noise, noise_bias: one (C,) tensor per layer; masks start at 1, noise at 0.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = {name: m for name, m in model.named_modules()
                       if isinstance(m, nn.BatchNorm2d) and m.weight is not None and m.bias is not None}
        if not self.layers:
            raise TacreconError(f"ANP needs BatchNorm2d layers with affine weight and bias; "
                                f"{type(model).__name__} has none")
        self.names = list(self.layers)
        kw = [dict(device=m.weight.device, dtype=m.weight.dtype) for m in self.layers.values()]
        self.masks = [torch.ones(m.num_features, **k).requires_grad_() for m, k in zip(self.layers.values(), kw)]
        self.noise = [torch.zeros(m.num_features, **k).requires_grad_() for m, k in zip(self.layers.values(), kw)]
        self.noise_bias = [torch.zeros(m.num_features, **k).requires_grad_() for m, k in zip(self.layers.values(), kw)]

    def __call__(self, x: Tensor, perturbed: bool) -> Tensor:
        """Logits (N, C) of the masked (and, if ``perturbed``, noisy) model on images ``x``."""
        overrides: dict[str, Tensor] = {}
        for name, bn, mask, dw, db in zip(self.names, self.layers.values(), self.masks, self.noise, self.noise_bias):
            overrides[f"{name}.weight"] = bn.weight.detach() * (mask + dw if perturbed else mask)
            overrides[f"{name}.bias"] = bn.bias.detach() * (1 + db) if perturbed else bn.bias.detach()
        return functional_call(self.model, overrides, (x,))

    @torch.no_grad()
    def reset_noise(self, eps: float, generator: torch.Generator) -> None:
        """Noise drawn uniformly in [-eps, eps] (both weight and bias noise)."""
        for p in self.noise + self.noise_bias:
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1).mul_(eps).to(p))

    @torch.no_grad()
    def clip_masks(self) -> None:
        for m in self.masks:
            m.clamp_(0, 1)

    def mask_values(self) -> dict[str, Tensor]:
        """The learned masks, {BN name: (C,)}, detached."""
        return {name: m.detach().clone() for name, m in zip(self.names, self.masks)}


def noise_step(perturbation: NeuronPerturbation, x: Tensor, y: Tensor, eps: float, steps: int,
               project: bool) -> None:
    """``steps`` signed-gradient ascent steps of size eps/steps on the perturbed model's CE.

    Without ``project`` the noise is not clipped back (the published code): |noise| <= 2 eps.
    """
    noise = perturbation.noise + perturbation.noise_bias
    for _ in range(steps):
        loss = F.cross_entropy(perturbation(x, perturbed=True), y)
        grads = torch.autograd.grad(loss, noise)
        with torch.no_grad():
            for p, g in zip(noise, grads):
                p.add_(g.sign(), alpha=eps / steps)
                if project:
                    p.clamp_(-eps, eps)


@torch.no_grad()
def prune(model: nn.Module, masks: dict[str, Tensor], threshold: float) -> int:
    """Set to 0 the BN weight of every channel whose mask is < ``threshold``; returns how many."""
    modules = dict(model.named_modules())
    count = 0
    for name, mask in masks.items():
        index = torch.nonzero(mask < threshold).flatten()
        modules[name].weight[index.to(modules[name].weight.device)] = 0
        count += int(index.numel())
    return count


@DEFENSES.register("anp")
@dataclass
class ANP(Defense):
    """Adversarial Neuron Pruning: learn per-channel BN masks under adversarial noise, prune the low ones.

    Args:
        eps: noise budget (the initial noise is uniform in [-eps, eps]).
        steps: signed-gradient steps on the noise per batch (step size eps / steps).
        alpha: weight of the clean loss; the perturbed loss gets 1 - alpha.
        mask_lr: SGD learning rate of the masks (momentum 0.9); masks are clipped to [0, 1].
        iterations: mask updates, each on a batch drawn with replacement from the clean set.
        batch_size: samples per update.
        project_noise: clip the noise to [-eps, eps] after each step (the paper's formulation;
            the published code, and BackdoorBench, do not, so |noise| <= 2 eps).
        pruning_max, pruning_step: the thresholds tried, 0, step, ..., max; channels with a mask
            below the threshold get BN weight 0 (bias kept).
        acc_ratio: the largest threshold is chosen whose held-out clean accuracy drops by less
            than this fraction of the unpruned model's.
        holdout: fraction of the clean set held out for that choice (the masks learn on the rest).
        crop_padding, flip: the train augmentation of the mask batches (-1: 1/8 of the side).
            No flip by default: BackdoorBench's mask batches use its train transform, which
            flips CIFAR-10 (``flip=True`` matches it there).

    The published recipe (BackdoorBench ``config/defense/anp``): eps 0.4, 1 step, alpha 0.2, mask
    lr 0.01 (the original code: 0.2), 2,000 updates of 256, thresholds 0 to 0.90 by 0.05, acc
    ratio 0.1; BN in train mode (batch statistics) while the masks learn, pruning applied to the
    original weights and running statistics.

    CPU budget: 300 updates of 128 (38,400 samples, each through three forward and two backward
    passes: 160 s for resnet_small on 2,250 CIFAR-10 images on one thread, so about 1.5 min on
    2 cores) with the original code's mask lr 0.2: with lr 0.01, 300 updates move the masks
    little (CIFAR-10 BadNets: 5 of 560 channels below 0.2, where lr 0.2 gives 62, and the
    backdoor survives pruning at 0.2).

    Deviations from BackdoorBench: BackdoorBench keeps the threshold with the lowest *test* ASR
    among those within the test-accuracy tolerance; here the threshold is chosen on a held-out
    tenth of the defender's clean set, without poisoned data: the largest whose clean accuracy
    stays within ``acc_ratio`` (a larger threshold prunes a superset of channels). Channels are
    pruned when mask < threshold (BackdoorBench: <=), so threshold 0 is the unpruned model.
    """

    paper: ClassVar[str] = ("Wu & Wang 2021, Adversarial Neuron Pruning Purifies Backdoored Deep Models, NeurIPS, "
                            "https://arxiv.org/abs/2110.14430")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {"iterations": 300, "batch_size": 128, "mask_lr": 0.2},
        "smoke": {"iterations": 4, "batch_size": 32, "pruning_step": 0.3},
    }

    eps: float = 0.4
    steps: int = 1
    alpha: float = 0.2
    mask_lr: float = 0.01
    iterations: int = 2000
    batch_size: int = 256
    project_noise: bool = False
    pruning_max: float = 0.90
    pruning_step: float = 0.05
    acc_ratio: float = 0.1
    holdout: float = 0.1
    crop_padding: int = -1
    flip: bool = False

    def validate(self) -> None:
        if self.eps < 0 or self.steps < 1:
            raise TacreconError(f"ANP: need eps >= 0 and steps >= 1, got {self.eps}, {self.steps}")
        if not 0 <= self.alpha <= 1:
            raise TacreconError(f"ANP: alpha must be in [0, 1], got {self.alpha}")
        if self.mask_lr <= 0 or self.iterations < 0 or self.batch_size < 1:
            raise TacreconError(f"ANP: need mask_lr > 0, iterations >= 0 and batch_size >= 1, got "
                                f"{self.mask_lr}, {self.iterations}, {self.batch_size}")
        if not 0 <= self.pruning_max <= 1 or self.pruning_step <= 0:
            raise TacreconError(f"ANP: need pruning_max in [0, 1] and pruning_step > 0, got "
                                f"{self.pruning_max}, {self.pruning_step}")
        if not 0 < self.acc_ratio <= 1 or not 0 < self.holdout < 1:
            raise TacreconError(f"ANP: acc_ratio must be in (0, 1] and holdout in (0, 1), got "
                                f"{self.acc_ratio}, {self.holdout}")

    def learn_masks(self, model: nn.Module, clean: Split, generator: torch.Generator) -> dict[str, Tensor]:
        """Train the masks on a copy of ``model`` (BN in train mode); returns {BN name: mask (C,)}."""
        work = copy.deepcopy(model).train()
        for p in work.parameters():
            p.requires_grad_(False)
        pert = NeuronPerturbation(work)
        opt = torch.optim.SGD(pert.masks, lr=self.mask_lr, momentum=0.9)
        pad = self.crop_padding if self.crop_padding >= 0 else clean.x.shape[-1] // 8
        loss = torch.zeros(())
        for _ in range(self.iterations):
            idx = to_device(torch.randint(len(clean), (self.batch_size,), generator=generator), clean.device)
            x, y = augment(clean.x[idx], generator, pad, self.flip), clean.y[idx]
            loss_rob = torch.zeros((), device=x.device)
            if self.eps > 0:
                pert.reset_noise(self.eps, generator)
                noise_step(pert, x, y, self.eps, self.steps, self.project_noise)
                loss_rob = F.cross_entropy(pert(x, perturbed=True), y)
            loss_nat = F.cross_entropy(pert(x, perturbed=False), y)
            loss = self.alpha * loss_nat + (1 - self.alpha) * loss_rob
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pert.clip_masks()
        self.stats_["final_mask_loss"] = float(loss.detach())
        return pert.mask_values()

    def thresholds(self) -> list[float]:
        """0, step, 2 step, ..., up to pruning_max."""
        return [float(t) for t in np.round(np.arange(0, self.pruning_max + 1e-9, self.pruning_step), 10)]

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        train, val = holdout(clean, self.holdout, generator)
        start = time.perf_counter()
        masks = self.learn_masks(model, train, generator)
        self.stats_["mask_seconds"] = time.perf_counter() - start
        self.masks_ = masks
        start = time.perf_counter()
        base = accuracy(model, val)
        original = copy.deepcopy(model.state_dict())
        sweep, chosen = [], 0.0
        for t in self.thresholds():
            model.load_state_dict(original)
            count = prune(model, masks, t)
            acc = accuracy(model, val)
            sweep.append({"threshold": t, "pruned": count, "val_acc": acc})
            if (base - acc) / max(base, 1e-12) < self.acc_ratio:
                chosen = t
        model.load_state_dict(original)
        self.stats_["pruned"] = prune(model, masks, chosen)
        self.stats_["threshold"] = chosen
        self.stats_["sweep"] = sweep
        self.stats_["select_seconds"] = time.perf_counter() - start
