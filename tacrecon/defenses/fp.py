"""FP: Fine-Pruning, in BackdoorBench's form: mask the latent channels least active on clean
data out of the final linear layer, as many as the clean accuracy allows, then fine-tune.

Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, columns_held_at_zero, holdout
from tacrecon.defenses.finetune import FinetuneDefense
from tacrecon.errors import TacreconError
from tacrecon.models import Classifier, as_classifier, latents_of


def pruning_order(latents: Tensor) -> Tensor:
    """Latent channels from the least to the most active: argsort of the mean of ``latents``
    (N, d) over the samples, ascending; (d,) channel indices."""
    return latents.mean(0).argsort()


@torch.no_grad()
def masked_accuracy(latents: Tensor, labels: Tensor, head: nn.Linear, pruned: Tensor) -> float:
    """Accuracy of ``head`` on ``latents`` (N, d) with the weight columns ``pruned`` (k,) zeroed,
    i.e. of the model whose final layer no longer reads those channels; ``labels`` (N,)."""
    keep = torch.ones(latents.shape[1], dtype=latents.dtype, device=latents.device)
    keep[pruned] = 0
    logits = head(latents * keep)
    return float((logits.argmax(1) == labels).float().mean())


def choose_pruning(latents: Tensor, labels: Tensor, head: nn.Linear, order: Tensor, step: int,
                   acc_ratio: float) -> tuple[int, list[tuple[int, float]]]:
    """How many channels of ``order`` (d,) to prune: the largest multiple of ``step`` whose
    relative accuracy drop on the validation ``latents`` (N, d) / ``labels`` (N,) stays below
    ``acc_ratio`` (the sweep stops at the first level that breaks it).

    Returns:
        the number of channels to prune, and the sweep as (pruned, accuracy) pairs (the last
        pair is the level that broke the rule, if one did).
    """
    acc0 = masked_accuracy(latents, labels, head, order[:0])
    curve, chosen = [(0, acc0)], 0
    for k in range(step, order.numel() + 1, step):
        acc = masked_accuracy(latents, labels, head, order[:k])
        curve.append((k, acc))
        if acc0 <= 0 or (acc0 - acc) / acc0 >= acc_ratio:
            break
        chosen = k
    return chosen, curve


@DEFENSES.register("fp")
@dataclass
class FP(FinetuneDefense):
    """Fine-Pruning as BackdoorBench runs it (``defense/fp.py``, ``config/defense/fp``).

    1. The latent (the input of the final linear layer, any :class:`Classifier`) is averaged
       over the clean training part; its channels are sorted by mean activation, ascending.
    2. Channels are masked out of the final layer (its weight columns zeroed) ``step`` =
       ceil(``once_prune_ratio`` * d) at a time while the relative drop of clean accuracy stays
       below ``acc_ratio``; the last level within the rule is kept.
    3. The pruned model is fine-tuned on the whole clean set with the mask in place (a
       ``torch.nn.utils.prune`` mask, made permanent afterwards: the pruned columns stay 0).

    Args:
        acc_ratio: the largest tolerated relative drop of clean accuracy (BB: 0.1).
        once_prune_ratio: the fraction of the d channels pruned per step (BB: 0.01, 6 of 512).
        val_fraction: the part of the clean set held out to measure clean accuracy.
        (the fine-tune fields: :class:`FinetuneDefense`).

    Deviations from BackdoorBench: BB measures the accuracy of each level on the *test* set;
    here it is measured on ``val_fraction`` (20%, 500 CIFAR-10 images) of the defender's clean
    set, held out from the activation statistics (BB averages them over the augmented clean
    set; here un-augmented). BB masks ``num_pruned - 1`` channels (an off-by-one) and, as its
    "best" model aliases the one being pruned, fine-tunes the first level that *broke* the
    rule; here exactly the last level within it is fine-tuned. The fine-tune uses all clean
    samples (the validation part has served its purpose once the level is chosen).

    The published recipe (the defaults): acc_ratio 0.1, once_prune_ratio 0.01, 100 epochs,
    batch 256, SGD lr 0.01 momentum 0.9 wd 5e-4, cosine. CPU budget: 20 epochs, as FT (50,000
    samples, about 40 s for resnet_small on 2 cores); the pruning sweep itself costs one
    forward pass over the clean set.
    """

    paper: ClassVar[str] = ("Liu et al. 2018, Fine-Pruning: Defending Against Backdooring Attacks on Deep "
                             "Neural Networks, https://arxiv.org/abs/1805.12185")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {"epochs": 20}, "smoke": {"epochs": 1}}

    acc_ratio: float = 0.1
    once_prune_ratio: float = 0.01
    val_fraction: float = 0.2

    def validate(self) -> None:
        super().validate()
        if not 0 < self.acc_ratio <= 1:
            raise TacreconError(f"FP: acc_ratio must be in (0, 1], got {self.acc_ratio}")
        if not 0 < self.once_prune_ratio <= 1:
            raise TacreconError(f"FP: once_prune_ratio must be in (0, 1], got {self.once_prune_ratio}")
        if not 0 < self.val_fraction < 1:
            raise TacreconError(f"FP: val_fraction must be in (0, 1), got {self.val_fraction}")

    def prune_plan(self, classifier: Classifier, clean: Split,
                   generator: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        """The channels (k,) to mask out of the final layer of ``classifier`` (not modified), and
        the sweep's statistics; uses only ``clean`` (split into activation and validation parts)."""
        train, val = holdout(clean, self.val_fraction, generator)
        order = pruning_order(latents_of(classifier, train.x))
        step = math.ceil(self.once_prune_ratio * order.numel())
        head = classifier.get_classifier()
        n_pruned, curve = choose_pruning(latents_of(classifier, val.x), val.y, head, order, step, self.acc_ratio)
        stats = {"n_pruned": n_pruned, "latent_dim": order.numel(), "step": step, "val_size": len(val),
                 "val_acc_before": curve[0][1], "val_acc_pruned": dict(curve)[n_pruned], "sweep": curve}
        return order[:n_pruned], stats

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        start = time.perf_counter()
        classifier = as_classifier(model)
        self.pruned_, stats = self.prune_plan(classifier, clean, generator)
        self.stats_.update(stats, prune_seconds=time.perf_counter() - start)
        start = time.perf_counter()
        head = classifier.get_classifier()
        with columns_held_at_zero(head, self.pruned_):
            self.stats_["losses"] = self.finetune(model, clean, generator)
        self.stats_["finetune_seconds"] = time.perf_counter() - start
