"""What is left of a backdoor after a repair, estimated from clean data only.

The rescan of a repaired model cannot see what pruning hid: the pruned units are held at zero in
the head, so the target's latent norm looks ordinary while the body still reacts to the trigger.
The estimate therefore works in the input space: for the target and for a few other classes, it
searches the most effective small masked patch (a mask of at most ``pixels`` pixels and a pattern;
Neural Cleanse's parametrization at a fixed budget instead of a minimized one) and
measures the share of clean images of the other classes that it sends there. A backdoor that
survived gives its target a patch far more effective than any other class gets at the same
budget; the residual score is the target's share minus the median share of the other classes.
The budget is a pixel count, not a share of the image: patch triggers keep their size in pixels
across resolutions (BadNets' 3 x 3 on 8 x 8 digits and on 32 x 32 CIFAR-10), while a share that
fits digits lets a patch send most CIFAR-10 images to any class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tacrecon.data.augment import stamp, to_device
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.models import Classifier, inspecting
from tacrecon.tac.config import SelfCheckConfig


@dataclass
class Residual:
    """The estimate for one target: ``success`` (the target's share of clean images sent to it by
    its best patch), ``others`` (the same share for each compared class) and ``score`` (``success``
    minus the median of ``others``; the backdoor counts as present above the config's ``margin``)."""

    target: int
    success: float
    others: dict[int, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        shares = sorted(self.others.values())
        return self.success - (shares[(len(shares) - 1) // 2] if shares else 0.0)

    def record(self) -> dict:
        return {"target": self.target, "success": self.success, "others": self.others, "score": self.score}


def patch_success(model: Classifier, clean: Split, k: int, cfg: SelfCheckConfig, generator: torch.Generator) -> float:
    """The share of ``clean`` images outside class ``k`` that the best patch of at most
    ``cfg.pixels`` pixels (:func:`search_patch`) sends to ``k``."""
    others = clean.x[clean.y != k]
    mask, pattern = search_patch(model, clean, k, cfg.pixels, cfg.steps, cfg.lr, cfg.batch_size, generator)
    with torch.no_grad():
        return stamped_share(model, others, mask, pattern, k)


def search_patch(model: Classifier, clean: Split, k: int, pixels: int, steps: int, lr: float, batch_size: int,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The most effective patch towards class ``k`` of at most ``pixels`` pixels: a mask (1, H, W)
    and a pattern (C, H, W) in [0, 1] (for :func:`~tacrecon.data.augment.stamp`), searched on the
    clean images outside ``k`` (:func:`search_mapped_patch`)."""
    others = clean.x[clean.y != k]
    if others.shape[0] == 0:
        raise TacreconError(f"the clean set has no image outside class {k} to search a patch on")
    to = torch.full((others.shape[0],), k, dtype=torch.long, device=clean.device)
    return search_mapped_patch(model, others, to, pixels, steps, lr, batch_size, generator)


def search_mapped_patch(model: Classifier, x: Tensor, to: Tensor, pixels: int, steps: int, lr: float,
                        batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The patch of at most ``pixels`` pixels that best sends each image of ``x`` (N, C, H, W) to
    its class in ``to`` (N,): a mask (1, H, W) and a pattern (C, H, W) in [0, 1]. One class for
    every image is :func:`search_patch`; one per source class is an all-to-all or
    source-specific trigger.

    Adam on the mask and the pattern in sigmoid space, the mask starting near 0, cross-entropy
    towards ``to`` on ``batch_size`` of the images per step plus a penalty on the mask's sum above
    the budget; the final mask keeps only its ``pixels`` largest values, so the budget holds
    exactly. Run it under :func:`~tacrecon.models.inspecting` so that the model's batch statistics
    and parameters are left alone.
    """
    _, c, h, w = x.shape
    budget = min(pixels, h * w)
    mask_raw = torch.full((1, h, w), -6.0, device=x.device, requires_grad=True)
    pattern_raw = torch.zeros(c, h, w, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=lr)
    for _ in range(steps):
        idx = to_device(torch.randint(x.shape[0], (batch_size,), generator=generator), x.device)
        mask, pattern = torch.sigmoid(mask_raw), torch.sigmoid(pattern_raw)
        loss = F.cross_entropy(model(stamp(x[idx], mask, pattern)), to[idx])
        loss = loss + F.relu(mask.sum() - budget) / budget
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return hard_budget(torch.sigmoid(mask_raw), budget), torch.sigmoid(pattern_raw)


def hard_budget(mask: Tensor, budget: int) -> Tensor:
    """``mask`` (1, H, W) with all but its ``budget`` largest values set to 0."""
    flat = mask.flatten()
    keep = flat.topk(min(budget, flat.numel())).indices
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.view_as(mask)


def stamped_share(model: Classifier, x: Tensor, mask: Tensor, pattern: Tensor, k: int | Tensor,
                  batch: int = 512) -> float:
    """The share of images ``x`` (N, C, H, W) that ``model`` puts in class ``k`` once stamped
    (``k`` (N,): each image's own class)."""
    hits = 0
    for i in range(0, x.shape[0], batch):
        part = x[i:i + batch]
        target = k if isinstance(k, int) else k[i:i + batch]
        hits += int((model(stamp(part, mask, pattern)).argmax(1) == target).sum())
    return hits / x.shape[0]


def compared_classes(num_classes: int, target: int, count: int, generator: torch.Generator) -> list[int]:
    """Up to ``count`` classes other than ``target``, drawn at random when there are more."""
    others = [k for k in range(num_classes) if k != target]
    if len(others) <= count:
        return others
    pick = torch.randperm(len(others), generator=generator)[:count]
    return sorted(others[int(i)] for i in pick)


def estimate_residual(model: Classifier, clean: Split, target: int, cfg: SelfCheckConfig | None = None,
                      generator: torch.Generator | None = None) -> Residual:
    """The residual estimate of ``target`` on ``model`` (eval mode; not modified) with ``clean``."""
    cfg = cfg or SelfCheckConfig()
    generator = generator or torch.Generator().manual_seed(0)
    with inspecting(model):
        present = set(clean.y.unique().tolist())
        compared = [k for k in compared_classes(model.num_classes, target, cfg.classes, generator) if k in present]
        return Residual(target, patch_success(model, clean, target, cfg, generator),
                        {k: patch_success(model, clean, k, cfg, generator) for k in compared})
