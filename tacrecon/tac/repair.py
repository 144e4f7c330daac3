"""TAC's repair: the units to prune, the stand-in triggers to stamp, and the TAC loss of the fine-tune.

The estimator (:class:`tacrecon.defenses.tac.TAC`) runs them in this order: stand-in triggers
searched on the model before any pruning; the TAC's units pruned (held at 0 in the head); a
fine-tune on the clean set with the stand-ins stamped on part of every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tacrecon.data.split import Split
from tacrecon.models import Classifier, inspecting
from tacrecon.tac.config import DetectionConfig, PriorConfig, PruneConfig, RobustLookConfig, StandInConfig
from tacrecon.tac.detect import ScanResult, class_prior, head_of, latents_of, reconstruct
from tacrecon.tac.prune import prune_plan, prune_to_peak
from tacrecon.tac.residual import search_mapped_patch, search_patch, stamped_share
from tacrecon.tac.stand_in import search_stand_in, stand_in_success

LossFn = Callable[[Classifier, Tensor, Tensor], Tensor]


def unlearn_loss(shifts: list[Tensor], targets: list[int], beta: float, teacher: Classifier | None = None,
                 distill: float = 0.0, temperature: float = 2.0, skip: float = 0.0) -> LossFn:
    """The fine-tune's loss: CE on clean latents + beta * mean over flagged t of CE on the latents
    of the samples with y != t shifted by s_t (their true labels kept) + ``distill`` * the
    distillation term of :func:`distillation` from ``teacher`` (the model before the repair) on
    the batch but its first ``skip`` share (where the stand-ins are stamped: the teacher's view
    of them still carries the backdoor).

    ``shifts`` is a one-element list holding the (T, d) stack of s_t, so that an epoch hook can
    replace it; ``targets`` (T,) are the flagged classes (several for a multi-target attack).
    """
    def loss(model: Classifier, x: Tensor, y: Tensor) -> Tensor:
        z = model.latent(x)
        head = model.get_classifier()
        logits = head(z)
        total = F.cross_entropy(logits, y)
        first = round(skip * x.shape[0])
        if distill > 0 and teacher is not None and first < x.shape[0]:
            with torch.no_grad():
                reference = teacher(x[first:])
            total = total + distill * distillation(logits[first:], reference, targets, temperature)
        if beta == 0:
            return total
        terms = []
        for s, t in zip(shifts[0], targets):
            keep = y != t
            if bool(keep.any()):
                terms.append(F.cross_entropy(head(z[keep] + s.to(z)), y[keep]))
        return total + beta * torch.stack(terms).mean() if terms else total
    return loss


def distillation(student: Tensor, teacher: Tensor, targets: list[int], temperature: float) -> Tensor:
    """KL(teacher || student) of the softened logits (N, C) without the targets' columns, times
    temperature^2: the repaired model keeps the original's view of the clean classes, and the
    original's pull towards a target (on a stamped stand-in, say) is not taught back."""
    keep = torch.ones(student.shape[1], dtype=torch.bool, device=student.device)
    keep[targets] = False
    log_s = F.log_softmax(student[:, keep] / temperature, dim=1)
    log_t = F.log_softmax(teacher[:, keep].to(student.dtype) / temperature, dim=1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2


def refresh_shifts(model: Classifier, clean: Split, targets: list[int], shifts: list[Tensor],
                   detection: DetectionConfig) -> Callable[[int], None]:
    """An epoch hook that recomputes the s_t (T, d) in ``shifts[0]`` against the current model
    before every epoch after the first."""
    def hook(epoch: int) -> None:
        if epoch > 0:
            z = latents_of(model, clean.x)
            shifts[0] = reconstruct(model, z, detection.bias, detection.qp_quantile).shifts[targets].float()
    return hook


@dataclass
class PrunePlan:
    """The units a repair prunes, in order, and how the targets' norms moved while it chose them:
    ``relative_norms`` (the low-side targets' relative norms before each step) and
    ``high_side_norms`` (per high-side target, ||s_t|| before each step)."""

    units: list[int] = field(default_factory=list)
    relative_norms: list[list[float]] = field(default_factory=list)
    high_side_norms: dict[int, list[float]] = field(default_factory=dict)


def plan_pruning(model: Classifier, clean: Split, found: ScanResult, targets: list[int], cfg: PruneConfig,
                 detection: DetectionConfig, robust: RobustLookConfig, prior: PriorConfig) -> PrunePlan:
    """The latent units to prune for ``targets``, from the scan's clean latents only.

    A low-side target is pruned until its norm is ``cfg.stop`` x the median (:func:`prune_plan`),
    one found only by the robust look until its robust norm is (both only with ``cfg.low``), and
    a high-side target to the peak of its norm (:func:`prune_to_peak`).
    """
    latents, d = found.latents, found.latents.shape[1]
    weight, bias = head_of(model, detection.bias)
    step = cfg.step or -(-d // 128)
    scale = latents.double().std(0).clamp_min(1e-6) if cfg.rank == "shift_std" else None
    limit = int(cfg.max * d)
    plan = PrunePlan()
    low = [t for t in targets if t not in found.high_side and t not in found.robust] if cfg.low else []
    if low:
        weights = (found.plain.prior if detection.score == "norm"
                   else class_prior(found.plain.qp.norms, clean.y, model.num_classes, prior))
        plan.units, plan.relative_norms = prune_plan(latents, weight, bias, low, cfg.stop, step, limit,
                                                     detection.qp_quantile, scale, prior=weights)
    robust_targets = [t for t in targets if t in found.robust] if cfg.low else []
    if robust_targets and found.robust_look is not None:
        more, history = prune_plan(latents, weight, bias, robust_targets, cfg.stop, step, limit - len(plan.units),
                                   robust.quantile, scale, exclude=plan.units, prior=found.robust_look.prior)
        plan.units, plan.relative_norms = plan.units + more, plan.relative_norms + history
    for t in (t for t in targets if t in found.high_side):
        more, plan.high_side_norms[t] = prune_to_peak(latents, weight, bias, t, step, limit - len(plan.units),
                                                      detection.qp_quantile, exclude=plan.units, labels=clean.y,
                                                      max_drop=cfg.peak_max_drop)
        plan.units = plan.units + more
    return plan


def search_stand_ins(model: Classifier, clean: Split, targets: list[int], found: ScanResult, cfg: StandInConfig,
                     batch_size: int, generator: torch.Generator) -> tuple[Tensor | None, dict[str, Any]]:
    """A stand-in trigger (T, C, H, W) per low-side target with a finite s_t, searched on the
    model before any pruning, and the search's stats (None, {} where there is none to search).

    A high-side class gets none: its s_t is longer than any other class's, so a perturbation
    that reproduces it is a strong adversarial one, and :func:`prune_to_peak` already removes
    its trigger units.
    """
    reachable = [t for t in targets if t not in found.high_side and bool(torch.isfinite(found.shifts[t]).all())]
    if cfg.eps == 0 or not reachable:
        return None, {}
    start = time.perf_counter()
    deltas = torch.stack([search_stand_in(model, clean, t, found.shifts[t].float(), cfg.eps, cfg.steps, batch_size,
                                          cfg.lr, generator) for t in reachable])
    with torch.no_grad():
        hits = [stand_in_success(model, clean, t, d) for t, d in zip(reachable, deltas)]
    return deltas, {"stand_in_seconds": time.perf_counter() - start, "stand_in_targets": reachable,
                    "stand_in_success": hits}


def search_patch_stand_ins(model: Classifier, clean: Split, targets: list[int], cfg: StandInConfig,
                           generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """A patch stand-in per target (masks (T, 1, H, W), patterns (T, C, H, W)): the most
    effective patch of ``cfg.patch`` pixels towards it, searched on the model before any pruning,
    and the search's stats (seconds, each patch's success on the clean images of other classes)."""
    start = time.perf_counter()
    with inspecting(model):
        found = [search_patch(model, clean, t, cfg.patch, cfg.patch_steps, cfg.patch_lr, 64, generator)
                 for t in targets]
        hits = [stamped_share(model, clean.x[clean.y != t], m, p, t) for t, (m, p) in zip(targets, found)]
    masks, patterns = torch.stack([m for m, _ in found]), torch.stack([p for _, p in found])
    return masks, patterns, {"patch_seconds": time.perf_counter() - start, "patch_targets": list(targets),
                             "patch_success": hits}


def search_pair_patch(model: Classifier, clean: Split, pairs: list[tuple[int, int]], cfg: StandInConfig,
                      generator: torch.Generator) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """One patch stand-in for the (source, target) ``pairs`` of the pairwise look: the most
    effective patch of ``cfg.patch`` pixels that sends the clean images of each source to its
    target (a source's highest-scoring pair, the first of it in ``pairs``), a mask (1, 1, H, W)
    and a pattern (1, C, H, W); an all-to-all trigger sends every source to its own target, which
    no patch towards one class reproduces. The stats: seconds, the sources' share sent."""
    start = time.perf_counter()
    to_of: dict[int, int] = {}
    for s, t in pairs:
        to_of.setdefault(s, t)
    mapping = torch.full((int(clean.y.max()) + 1,), -1, dtype=torch.long, device=clean.device)
    mapping[list(to_of)] = torch.tensor(list(to_of.values()), device=clean.device)
    to = mapping[clean.y]
    sources = to >= 0
    x, to = clean.x[sources], to[sources]
    with inspecting(model):
        mask, pattern = search_mapped_patch(model, x, to, cfg.patch, cfg.patch_steps, cfg.patch_lr, 64, generator)
        hit = stamped_share(model, x, mask, pattern, to)
    return mask[None], pattern[None], {"pair_patch_seconds": time.perf_counter() - start,
                                       "pair_patch_pairs": [[s, t] for s, t in to_of.items()],
                                       "pair_patch_success": hit}
