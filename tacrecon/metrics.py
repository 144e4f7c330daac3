"""Clean accuracy (ACC), attack success rate (ASR), robust accuracy (RA) and DER.

All rates are fractions in [0, 1]. ASR and RA are measured on the test images whose label the
attack changes (for all-to-one: every image whose true label is not the target). A model may hold
several backdoors (:class:`Backdoor`); :func:`backdoor_rates` measures each, and the model's ASR is
the worst (largest) of them, its RA the worst (smallest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.models.base import evaluating

Trigger = Callable[[Tensor], Tensor]
LabelMap = Callable[[Tensor], Tensor]


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1024, transform: Trigger | None = None) -> Tensor:
    """Predicted labels (N,) for images ``x`` (N, C, H, W), optionally through ``transform`` first."""
    preds = []
    with evaluating(model):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if transform is not None:
                xb = transform(xb)
            preds.append(model(xb).argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=x.device)


def accuracy(model: nn.Module, data: Split, batch_size: int = 1024) -> float:
    """Fraction of ``data`` classified correctly (ACC on the clean test split)."""
    return rate(predict(model, data.x, batch_size) == data.y)


def all2one(target: int) -> LabelMap:
    """Label map of an all-to-one attack: every label goes to ``target``."""
    return lambda y: torch.full_like(y, target)


def all2all(num_classes: int) -> LabelMap:
    """Label map of an all-to-all attack: label y goes to (y + 1) mod C."""
    return lambda y: (y + 1) % num_classes


def attack_rates(model: nn.Module, data: Split, trigger: Trigger, label_map: LabelMap,
                 batch_size: int = 1024) -> tuple[float, float]:
    """(ASR, RA) of ``trigger`` on the images of ``data`` whose label the attack changes.

    ASR: share of triggered images classified as ``label_map(y)``; RA: share still classified
    as their true label ``y``.
    """
    bad = label_map(data.y)
    keep = bad != data.y
    if not bool(keep.any()):
        return float("nan"), float("nan")
    preds = predict(model, data.x[keep], batch_size, transform=trigger)
    return rate(preds == bad[keep]), rate(preds == data.y[keep])


@dataclass(frozen=True)
class Backdoor:
    """One backdoor of a model: its trigger and the labels it sends the images to.

    Attributes:
        name: unique among the model's backdoors (the attack's name; ``<name>-><target>`` for a
            member of a multi-target attack).
        trigger: images (N, C, H, W) in [0, 1] -> the triggered images, same shape and range.
        label_map: true labels (N,) -> the labels the attacker wants (N,).
        target: the target class of an all-to-one backdoor; None for an all-to-all one.
    """

    name: str
    trigger: Trigger
    label_map: LabelMap
    target: int | None


def backdoor_rates(model: nn.Module, data: Split, backdoors: list[Backdoor],
                   batch_size: int = 1024) -> dict[str, Any]:
    """ASR and RA of every backdoor, and the worst of each (the model's ASR and RA).

    Returns ``{"asr": max, "ra": min, "asr_per_backdoor": {name: ASR}, "ra_per_backdoor":
    {name: RA}}``; a backdoor with no image to measure (NaN) counts in neither max nor min.
    """
    if not backdoors:
        return {"asr": None, "ra": None}
    rates = {b.name: attack_rates(model, data, b.trigger, b.label_map, batch_size) for b in backdoors}
    asr = {name: r[0] for name, r in rates.items()}
    ra = {name: r[1] for name, r in rates.items()}
    return {"asr": worst(asr.values(), max), "ra": worst(ra.values(), min), "asr_per_backdoor": asr,
            "ra_per_backdoor": ra}


def worst(values: Any, pick: Callable[..., float]) -> float:
    """``pick`` (max or min) of the non-NaN ``values``; NaN when all are NaN."""
    kept = [v for v in values if v == v]
    return pick(kept) if kept else float("nan")


def per_backdoor_text(metrics: dict[str, Any], after: dict[str, Any] | None = None) -> str:
    """The ASR of each backdoor for a one-line summary, ``" (ASR badnets->1 95.0%, blended->7 90.0%)"``
    (``metrics`` alone) or ``" (ASR badnets->1 95.0% -> 1.0%, ...)"`` (before -> ``after``); empty
    where a model has one backdoor or the records hold no per-backdoor rates."""
    each = metrics.get("asr_per_backdoor") or {}
    later = (after or {}).get("asr_per_backdoor") or {}
    if len(each) < 2:
        return ""
    parts = [f"{name} {value:.1%}" + (f" -> {later[name]:.1%}" if name in later else "") for name, value in each.items()]
    return " (ASR " + ", ".join(parts) + ")"


def der(acc_before: float, acc_after: float, asr_before: float, asr_after: float) -> float:
    """Defense effectiveness rating, in [0, 1]: [max(0, dASR) - max(0, dACC) + 1] / 2.

    dASR = ASR_before - ASR_after, dACC = ACC_before - ACC_after; 0.5 means no change.
    """
    return (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + 1.0) / 2.0


def rate(hits: Tensor) -> float:
    """Mean of a boolean tensor as a float (NaN when empty)."""
    return float(hits.float().mean()) if hits.numel() else float("nan")
