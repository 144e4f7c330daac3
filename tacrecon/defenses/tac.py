"""TAC: reconstruct trigger-activated changes in the latent space, find the poisoned class, unlearn.

Iwahana et al. 2025, "Robust Backdoor Removal by Reconstructing Trigger-Activated Changes in
Latent Representation", https://arxiv.org/abs/2511.08944. The method, and every design choice
the paper leaves open, is described in docs/method.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.data.augment import add_clipped
from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, Defense, columns_held_at_zero
from tacrecon.errors import TacreconError
from tacrecon.metrics import predict, rate
from tacrecon.models import Classifier, as_classifier
from tacrecon.qp import QPResult, sample_distances, solve_latent_qp
from tacrecon.stats import (anomaly_index, corrected, count_prior, imbalance_pvalue, min_test_pvalue,
                            relative_scores)
from tacrecon.train import TrainConfig, fit

log = logging.getLogger(__name__)


@torch.no_grad()
def latents_of(model: Classifier, x: Tensor, batch_size: int = 512) -> Tensor:
    """Latents (N, d) of images ``x`` (N, C, H, W): one forward pass in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([model.latent(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def reconstruct(model: Classifier, clean: Split, bias: bool = True, quantile: float | None = None,
                latents: Tensor | None = None) -> QPResult:
    """Phase 1a: the minimal latent shift s_k (d,) of every class k, from the clean latents
    (computed here unless ``latents`` (N, d) of ``clean`` are given)."""
    head = model.get_classifier()
    z = latents if latents is not None else latents_of(model, clean.x)
    b = head.bias.detach() if bias and head.bias is not None else None
    return solve_latent_qp(z, head.weight.detach(), b, quantile=quantile)


def universality_ratios(model: Classifier, latents: Tensor, labels: Tensor, qp: QPResult, bias: bool = True) -> Tensor:
    """||s_k|| / (mean distance of a clean sample of another class to class k on its own): (C,).

    A class that is merely easy to reach (close to every sample) has both a small universal
    shift and small per-sample distances; a backdoor target is reachable by *one* shift almost
    as cheaply as each sample on its own. The ratio keeps the second and cancels the first.
    """
    head = model.get_classifier()
    b = head.bias.detach() if bias and head.bias is not None else None
    dist = sample_distances(latents, head.weight.detach(), b).cpu()
    y = labels.cpu()
    mean = torch.stack([dist[y != k, k].mean() if bool((y != k).any()) else dist[:, k].mean()
                        for k in range(dist.shape[1])])
    return qp.norms / mean.clamp_min(1e-12)


@dataclass
class Detection:
    """Phase 1b's verdict on per-class norms (C,): see :func:`detect`."""

    anomaly_index: Tensor
    relative: Tensor
    p_value: float
    flagged: list[int]
    unreachable: list[int]


@dataclass
class Scan:
    """Phases 1a and 1b on one model (:meth:`TAC.scan`).

    ``qp`` and ``detection`` are the plain QP and its test (on the norms over ``prior``, where the
    class-count correction is on); ``ratios`` (C,) the universality ratios; ``latents`` (N, d) the
    clean latents; ``shifts`` (C, d) the TAC s_t of every class (the robust one for a class found
    only by the second look); ``second`` those classes, with the robust QP and its test in
    ``second_qp`` and ``second_detection`` (None: no second look).
    """

    qp: QPResult
    detection: Detection
    ratios: Tensor
    latents: Tensor
    shifts: Tensor
    second: list[int] = field(default_factory=list)
    second_qp: QPResult | None = None
    second_detection: Detection | None = None
    prior: Tensor | None = None  # (C,) the class-count prior the plain norms were divided by (None: off)
    second_prior: Tensor | None = None

    @property
    def flagged(self) -> list[int]:
        """Every flagged class: the plain test's (most anomalous first), then the second look's."""
        return self.detection.flagged + self.second


def detect(norms: Tensor, threshold: float = 3.0, alpha: float = 0.05, rule: str = "mad",
           max_relative: float = 1.0, high_relative: float = 0.0) -> Detection:
    """Phase 1b: flag classes whose norm (C,) is unusually small (or, optionally, large).

    Returns the :class:`Detection`: ``anomaly_index`` (C,), ``relative`` (C,: norm over the
    median norm), ``p_value`` (of the smallest norm), ``flagged`` (classes, most anomalous first)
    and ``unreachable`` (the flagged classes of the high side) under ``rule``: ``mad`` (anomaly
    index > ``threshold``), ``pvalue`` (the minimum, if p < ``alpha``) or ``both`` (either); in
    every rule a class is flagged only if its norm is also below ``max_relative`` times the
    median norm (1: no such gate). With ``high_relative`` > 1 the MAD rule is two-sided: a class
    with anomaly index < -``threshold`` and a norm above ``high_relative`` times the median is
    flagged too (after the small-norm ones): a class that clean samples reach only at an
    unusual cost, the mark of a clean-label attack that poisons the whole target class (SIG at
    a 10% rate: its clean target images were never learned without the trigger).
    """
    if rule not in ("mad", "pvalue", "both"):
        raise TacreconError(f"rule must be mad, pvalue or both, got {rule!r}")
    index = anomaly_index(norms)
    relative = relative_scores(norms)
    p_value = min_test_pvalue(norms)
    by_mad = [int(k) for k in torch.argsort(index, descending=True) if index[k] > threshold]
    by_p = [int(torch.argmin(norms))] if p_value < alpha else []
    flagged = by_mad if rule == "mad" else by_p if rule == "pvalue" else by_mad + [k for k in by_p if k not in by_mad]
    flagged = [k for k in flagged if relative[k] < max_relative]
    high = []
    if high_relative > 1 and rule != "pvalue":
        finite = torch.isfinite(norms)
        high = [int(k) for k in torch.argsort(index) if finite[k] and index[k] < -threshold
                and relative[k] > high_relative]
    return Detection(index, relative, p_value, flagged + high, high)


def unlearn_loss(shifts: list[Tensor], targets: list[int], beta: float):
    """fit's loss: CE on clean latents + beta * mean over flagged t of CE on the latents of the
    samples with y != t shifted by s_t (their true labels kept).

    ``shifts`` is a one-element list holding the (T, d) stack of s_t, so the epoch hook can
    replace it; ``targets`` (T,) are the flagged classes (several for a multi-target attack).
    """
    def loss(model: Classifier, x: Tensor, y: Tensor) -> Tensor:
        z = model.latent(x)
        head = model.get_classifier()
        ce = F.cross_entropy(head(z), y)
        if beta == 0:
            return ce
        terms = []
        for s, t in zip(shifts[0], targets):
            keep = y != t
            if bool(keep.any()):
                terms.append(F.cross_entropy(head(z[keep] + s.to(z)), y[keep]))
        return ce + beta * torch.stack(terms).mean() if terms else ce
    return loss


def unlearn(model: Classifier, clean: Split, targets: int | list[int], shifts: Tensor, cfg: TrainConfig,
            beta: float = 1.0, recompute: bool = False, freeze_head: bool = False,
            generator: torch.Generator | None = None, bias: bool = True, quantile: float | None = None,
            batch_hook: Callable | None = None) -> list[float]:
    """Phase 2: fine-tune ``model`` in place so that latents shifted by s_t keep their labels.

    Args:
        targets: the poisoned class, or every flagged class (multi-target attacks).
        shifts: s_t, (d,) for one target or (T, d) for T targets: the reconstructed TACs.
        recompute: recompute the s_t against the current model before every epoch.
        freeze_head: train the backbone only.
        batch_hook: passed to :func:`~tacrecon.train.fit` (e.g. :func:`stamp_share`).
    Returns:
        the loss of each epoch.
    """
    targets = [targets] if isinstance(targets, int) else list(targets)
    current = [shifts.reshape(len(targets), -1)]

    def refresh(epoch: int) -> None:
        if recompute and epoch > 0:
            current[0] = reconstruct(model, clean, bias, quantile).shifts[targets].float()

    head = model.get_classifier()
    params = [p for p in model.parameters() if not (freeze_head and any(p is q for q in head.parameters()))]
    return fit(model, clean, cfg, generator=generator, loss_fn=unlearn_loss(current, targets, beta),
               params=params, epoch_hook=refresh, batch_hook=batch_hook, desc="tac unlearn")


def next_units(shift: Tensor, taken: Sequence[int], count: int, scale: Tensor | None = None) -> list[int]:
    """The ``count`` units not in ``taken`` with the largest |shift| (d,) components (over
    ``scale`` (d,) when given): the next ones a pruning step removes."""
    size = shift.abs().nan_to_num(0)
    if scale is not None:
        size = size / scale.double()
    size[list(taken)] = -1
    return [int(u) for u in torch.argsort(size, descending=True)[:count]]


def prune_plan(latents: Tensor, weight: Tensor, bias: Tensor | None, targets: list[int], stop: float = 1.0,
               step: int = 1, max_units: int | None = None, quantile: float | None = None,
               scale: Tensor | None = None, exclude: Sequence[int] = (),
               prior: Tensor | None = None) -> tuple[list[int], list[list[float]]]:
    """Phase 2a (pruning): the latent units that carry the reconstructed TACs, removed greedily.

    Repeats: solve the QP with the current head (``weight`` (C, d) with the pruned columns
    zeroed), take the flagged class t whose norm is smallest relative to the median norm, and
    prune the ``step`` unpruned units with the largest |s_t| components; until every target's
    norm is at least ``stop`` times the median (the class is then as hard to reach as a typical
    one), or ``max_units`` are pruned. Uses the clean ``latents`` (N, d) only. ``scale`` (d,)
    ranks the units by |s_t| / scale instead (e.g. their clean spread; None: by |s_t|).
    ``exclude``: units already pruned (for another class), kept zeroed and not counted.
    ``prior`` (C,): the norms are divided by it first (the scan's class-count prior).

    Returns:
        the pruned units in order, and the targets' relative norms before each step.
    """
    w = weight.detach().double().clone()
    b = bias.detach().double() if bias is not None else None
    z = latents.detach().double()
    w[:, list(exclude)] = 0
    limit = w.shape[1] // 2 if max_units is None else max_units
    pruned: list[int] = []
    history: list[list[float]] = []
    while True:
        qp = solve_latent_qp(z, w, b, quantile=quantile)
        rel = relative_scores(corrected(qp.norms, prior))[targets]
        history.append(rel.tolist())
        if bool((rel >= stop).all()) or len(pruned) >= limit:
            return pruned, history
        t = targets[int(torch.argmin(rel))]
        top = next_units(qp.shifts[t], list(exclude) + pruned, min(step, limit - len(pruned)), scale)
        pruned += top
        w[:, top] = 0


def head_accuracy(latents: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> float:
    """Accuracy of the linear head (C, d) on latents (N, d) with labels (N,)."""
    logits = latents @ weight.T + (bias if bias is not None else 0)
    return float((logits.argmax(1).cpu() == labels.cpu()).double().mean())


def prune_to_peak(latents: Tensor, weight: Tensor, bias: Tensor | None, target: int, step: int = 1,
                  max_units: int | None = None, quantile: float | None = None, patience: int = 4,
                  exclude: Sequence[int] = (), labels: Tensor | None = None,
                  max_drop: float = 0.01) -> tuple[list[int], list[float]]:
    """Phase 2a for an *unreachable* class t (the high side of :func:`detect`): prune its trigger units.

    A clean-label attack (SIG) makes t hard to reach from clean images, yet s_t still points
    along the trigger's latent units: they are t's cheapest way in. Removing them makes t harder
    still, so ||s_t|| rises while trigger units go and stops rising once only ordinary units are
    left (they serve every class alike). Repeats: solve t's QP with the current head, prune the
    ``step`` unpruned units with the largest |s_t| components; stops when ||s_t|| has not passed
    its running maximum for ``patience`` steps (or at ``max_units``) and keeps the units pruned up
    to that maximum; stops at once if t can no longer be reached at all. With the clean ``labels``
    (N,) it also stops before a step that would bring the head's accuracy on ``latents`` more than
    ``max_drop`` below its value at the start: trigger units carry nothing the clean samples need,
    ordinary units do, so this bounds the harm of a class flagged by mistake. ``exclude``: units
    already pruned (for another class), kept zeroed.

    Returns:
        the pruned units in order, and ||s_t|| before each step.
    """
    w = weight.detach().double().clone()
    b = bias.detach().double() if bias is not None else None
    z = latents.detach().double()
    gone = list(exclude)
    w[:, gone] = 0
    limit = w.shape[1] // 2 if max_units is None else max_units
    pruned: list[int] = []
    norms: list[float] = []
    best, since = 0, 0
    floor = None if labels is None else head_accuracy(z, w, b, labels) - max_drop
    while len(pruned) < limit and since < patience:
        if floor is not None and pruned and head_accuracy(z, w, b, labels) < floor:
            break
        qp = solve_latent_qp(z, w, b, quantile=quantile, classes=[target])
        norms.append(float(qp.norms[0]))
        if not torch.isfinite(qp.norms[0]):  # t is now out of reach of any shift: nothing more to remove
            return pruned, norms
        if norms[-1] > norms[best]:
            best, since = len(norms) - 1, 0
        elif len(norms) > 1:
            since += 1
        top = next_units(qp.shifts[0], gone + pruned, min(step, limit - len(pruned)))
        pruned += top
        w[:, top] = 0
    return pruned[:best * step], norms


def surrogate_trigger(model: Classifier, clean: Split, target: int, shift: Tensor, eps: float, steps: int = 150,
                      batch_size: int = 128, lr: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Phase 2b: an input-space stand-in for the trigger of ``target``, guided by its TAC.

    The universal perturbation delta (C, H, W), |delta| <= ``eps`` everywhere, whose latent change
    z(clip(x + delta)) - z(x) best reproduces ``shift`` (d,), s_t, on the clean images of the other
    classes (mean squared error, Adam on delta = eps * tanh(raw), ``steps`` batches of
    ``batch_size``). A latent-space loss can only re-weight the head; a fine-tune on images that
    carry delta with their true labels teaches the body to ignore the input pattern that produces
    the TAC. ``model`` is used in eval mode and not modified.
    """
    others = clean.x[clean.y != target]
    if others.shape[0] == 0:
        raise TacreconError(f"the clean set has no image outside class {target} to search a surrogate trigger on")
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


def stamp_share(deltas: Tensor, ratio: float):
    """A batch hook for :func:`~tacrecon.train.fit`: the first ``ratio`` of every (shuffled) batch
    gets one of the surrogate triggers ``deltas`` (T, C, H, W) added, in turn, clipped to [0, 1];
    labels kept."""
    def hook(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = round(ratio * x.shape[0])
        if n == 0:
            return x, y
        x = x.clone()
        which = torch.arange(n, device=x.device) % deltas.shape[0]
        x[:n] = add_clipped(x[:n], deltas.to(x)[which])
        return x, y
    return hook


@DEFENSES.register("tac")
@dataclass
class TAC(Defense):
    """TAC (arXiv 2511.08944): latent QP reconstruction, poisoned-class test, unlearning.

    Args:
        score: the per-class score the test looks at: ``norm`` (||s_k||, the paper's) or
            ``ratio`` (||s_k|| over the mean per-sample distance, see :func:`universality_ratios`).
        bias: include the head's bias in the QP constraints.
        quantile: 1.0 uses the max over clean samples (the paper's form); q < 1 the q-quantile.
        rule, threshold, alpha, max_relative: the detection rule of :func:`detect`. The default,
            anomaly index > 3, was chosen on digits models of tuning seeds 100-109 (benchmarks/
            tac_tuning_digits.py): no false positive on 10 clean models, BadNets found in 9 of 10;
            the usual threshold of 2 flagged 2 of the 10 clean models. The index alone fails on
            CIFAR-10, where a model's norms can lie within a few percent of each other (MAD tiny):
            on the BadNets tuning model (seed 100) class 1 had index 5.7 at 4% below the median. So a class
            must also have a norm below ``max_relative`` = 0.85 of the median: the smallest
            relative norm of the clean tuning models (digits seeds 100-109: 0.893; CIFAR-10 seed
            100: 0.966), less a margin of about 0.04, rounded down to 0.05.
        high_relative: the high side of the MAD rule (:func:`detect`; 0: one-sided). 1.25: the
            largest relative norm of any class that is not a target in the tuning models (clean
            and backdoored, digits seeds 100-109 and CIFAR-10 seed 100: 1.204, a non-target
            class of a digits Blended model), plus a margin of about 0.04, rounded up to 0.05.
        second_quantile, second_threshold, second_max_relative: the second look (ours). The QP
            is solved again with the lower ``second_quantile`` of the margins instead of their
            max (each constraint asks that share of the clean samples, not all of them, to reach
            k), and a class is flagged too when its robust norm has anomaly index >
            ``second_threshold`` and lies below ``second_max_relative`` x the median robust norm
            (0: off). A trigger that does not move *every* clean sample alike (LiRA's is made per
            image) leaves its target reachable by an unusually small shift for most samples but
            not for the hardest few, which set the plain norm. A class found only this way is
            repaired with its robust s_t (pruned until its robust norm is typical). Chosen on 57
            tuning models (benchmarks/tac_quantile_tuning.py, docs/benchmarks/
            tac_quantile_tuning.md: digits seeds 100-109 x clean, BadNets, Blended, WaNet, LiRA,
            and the seven CIFAR-10 tuning models): among q in {0.99, 0.95, 0.9, 0.8}, index
            thresholds {2, 2.5, 3, 4} and bounds {0.8, 0.85, 0.9}, the candidates that add no
            wrong class on any tuning model, q 0.95 with index > 2 and below 0.85 x median finds
            the most targets (digits Blended 6 of 10 against the plain rule's 3, WaNet 10 of 10
            against 8). The relative bound is the binding half: no class that is not a target
            lies below 0.887 x median at q 0.95 on any tuning model; at q 0.9 digits clean models
            reach 0.735, so lower quantiles flag clean classes.
        prior, prior_ratio, prior_alpha: the class-count correction (ours). On an imbalanced data
            set a frequent class is cheap to reach without any backdoor (the head's prior): the
            norms follow the class counts (GTSRB: Spearman -0.98,
            docs/benchmarks/tac_class_frequency.md). With the correction each look's scores are
            divided by :func:`~tacrecon.stats.count_prior`, a Theil-Sen power law of the clean set's
            class counts (robust to the target), before the test, so a class is judged against
            classes of its own frequency; the pruning's stop uses the same corrected norms.
            ``auto``: on when the clean set's class counts span at least ``prior_ratio`` (2;
            CIFAR-10's 5% draw spans about 1.3, GTSRB's about 10) and a chi-square test rejects
            equal class probabilities at ``prior_alpha`` (1e-3), so that the sampling noise of a
            small balanced clean set (a 5% digits draw holds 3 to 12 images a class) does not turn
            it on; ``counts``: always; ``off``: never. The clean set stands in for the training
            split: drawn at random from it (as ``bench`` and ``--clean-fraction`` draw it), its
            counts carry the imbalance; a balanced clean set carries none and leaves the correction
            off. Chosen on imbalanced digits (benchmarks/tac_class_prior_digits.py, tuning seeds
            100-109, classes thinned to 1x-0.1x): with a drawn clean set TAC found 3 of 10 BadNets
            targets and flagged a wrong class on 6 of 20 models without it, 7 of 10 and 3 of 20 with
            it; the head's bias as the prior instead did worse (4 of 10, 9 of 20).
        force_target: repair this class (only) even if the model looks clean (-1: off).
            Otherwise every flagged class is repaired (multi-target attacks), each with its s_t.
        repair: fine-tune after detection (False: scan only).
        method: how Phase 2 repairs. ``prune`` (default): remove the latent units that carry the
            reconstructed TAC (:func:`prune_plan`: greedily, until the target's norm is
            ``prune_stop`` times the median norm; ``prune_step`` units per step, 0: d / 128;
            at most ``prune_max`` of the d units), then fine-tune with them held at 0.
            ``prune_rank``: which units go first, ``shift`` (largest |s_t| component) or
            ``shift_std`` (largest |s_t| over the unit's clean standard deviation: a shift along
            a unit that barely varies on clean data is the more anomalous). A flagged class
            of the high side (``unreachable_``) is pruned by :func:`prune_to_peak` instead,
            stopping before the clean set's accuracy (pruned head, no fine-tune) falls by more
            than ``peak_max_drop``: on the SIG tuning model it stays within 0.5 points for the 20
            units the rule prunes, while pruning the largest-norm classes of the clean and Blended
            tuning models this way (as a false positive would) costs a point within 3-5 units.
            ``finetune``: fine-tune only, with the TAC loss of :func:`unlearn_loss`.
        epochs, lr, batch_size, beta, recompute, freeze_head: the fine-tune (:func:`unlearn`);
            beta 0 is plain cross-entropy.
        crop_padding: random-crop shift during the fine-tune (-1: 1/8 of the image side).
        surrogate_eps, surrogate_ratio, surrogate_steps, surrogate_lr: Phase 2b (ours). For
            every flagged class of the low side, :func:`surrogate_trigger` searches, on the model
            before pruning, the universal input perturbation of L-inf radius ``surrogate_eps``
            whose latent change reproduces s_t (``surrogate_steps`` Adam steps at
            ``surrogate_lr``); the fine-tune adds it to ``surrogate_ratio`` of every batch with
            the true labels kept (:func:`stamp_share`). 0: off.

    Why these defaults (benchmarks/tac_repair_tuning_cpu.py, docs/benchmarks/
    tac_repair_tuning_cpu.md; CIFAR-10 tuning models of seed 100, chosen by ASR <= 5% on 500
    held-out training images of every backdoored model, then the smallest held-out accuracy
    drop; the test split was not used): the TAC loss alone, head frozen, removes the backdoor but
    costs 3-7 test points (BadNets) and 8-13 on a clean model repaired by mistake, because a
    frozen head can only be out-voted by enlarging every clean margin against t; with the whole
    network trained (batch 128, 20 epochs) it costs 2-3 points. Pruning the TAC's units first
    (~20 of 128 units for BadNets and Blended, 1-2 for a clean model's smallest class) removes
    it at once (held-out ASR 0.2% / 1.6%) and a plain fine-tune with the head frozen recovers the
    accuracy: prune to 1.1 x median + 10 epochs of batch 128 gave held-out ASR 1.1% / 4.9% at
    1.2 / 0.6 points (0.8 on a clean model); prune to 1.0 left 5.8% on Blended; the TAC loss
    after pruning (whole network, beta 1) cost 2.8 points. On the toy digits models (8 x 8
    images) pruning does not remove BadNets (ASR stays 93-100%) where ``finetune`` with the
    head frozen and batch 32 does (benchmarks/tac_repair_tuning_digits.py): the choice is
    measured per setting, and the CPU protocol's is the default. With ``beta`` 0.1 and
    ``recompute`` the fine-tune after pruning also applies the TAC loss to s_t of the pruned
    model: lower held-out ASR on every backdoored tuning model (2,500 held-out images; Blended
    seeds 100 / 101: 1.3% / 2.6% against 4.3% / 10.8%) at 2.4-3.3 points on every one; it meets
    the removal bar on none of the five backdoored tuning models against the default's 3 of 5
    (docs/benchmarks/tac_repair_tuning_cpu_val2500.md), so it is an option, not the default.

    Phase 2b, the surrogate triggers (docs/benchmarks/tac_repair_tuning_cpu_val2500.md, the
    same six tuning models and 2,500 held-out images): pruning and the latent loss can only act
    on the head's view of the latents, and what is left of a full-image trigger comes back in the
    fine-tune (default without it: Blended 4.3% / 10.8%, WaNet 35.2% held-out ASR). Stamping the
    s_t-guided perturbation on a fifth of every batch: radius 0.1: BadNets 1.3% at -1.7 points,
    Blended 1.1% / 0.3% at -1.2 / -1.2, WaNet 2.3% at -1.5, SIG 0.0% at -2.5, the clean model
    repaired by mistake -2.7; radius 0.2: 1.2% / 1.3% / 0.3% / 4.0% / 0.0% at -1.8 / -1.5 / -1.6 /
    -1.4 / -2.2, clean -2.2. Both meet the removal bar on the four low-side models and miss it on
    SIG by its cost, where prune_to_peak alone already gave 0.0% at -0.9: so the high side gets
    no surrogate, and 0.1 (the smaller mean drop on the four) is the default. It costs a false
    positive about 1.5 points more than before (clean tuning model: -2.7 against -1.2).

    ``prune_stop`` 1.2 (revision 6; before: 1.1), by the same rule on the same six CIFAR-10 tuning
    models and the GTSRB Blended tuning model (seed 100; docs/benchmarks/tac_repair_tuning_cpu_val2500.md
    and tac_repair_tuning_gtsrb.md): held-out ASR at 1.1 / 1.2: BadNets 1.3% / 0.9% at -1.7 /
    -1.8 points, Blended 1.1% / 0.6% at -1.2 / -1.8, WaNet 2.3% / 2.3% at -1.5 / -2.0 (1.96), LiRA
    0.9% / 0.3% at -2.2 / -2.2, GTSRB Blended 7.8% / 4.6% (GTSRB's held-out training images stay at
    100%); the clean models repaired by mistake -2.7 / -2.6 (CIFAR-10). 1.2 meets the removal bar
    on 4 of these 5 low-side models, 1.1 on 3 (LiRA misses it by its cost under both).

    CPU budget: the defaults: 10 epochs over the 5% clean set (2,500 CIFAR-10 images, 200 steps
    of 128), about 30 QPs for the pruning plan, and 150 steps of 128 images for each surrogate.
    """

    paper: ClassVar[str] = ("Iwahana et al. 2025, Robust Backdoor Removal by Reconstructing Trigger-Activated "
                             "Changes in Latent Representation, https://arxiv.org/abs/2511.08944")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "smoke": {"epochs": 1, "force_target": 0,
                                                                         "surrogate_steps": 10}}
    # 2: the high side is pruned (prune_to_peak); 3: surrogate triggers; 4: second look; 5: class-count prior;
    # 6: prune_stop 1.1 -> 1.2
    revision: ClassVar[int] = 6

    score: str = "norm"
    bias: bool = True
    quantile: float = 1.0
    rule: str = "mad"
    threshold: float = 3.0
    alpha: float = 0.05
    max_relative: float = 0.85
    high_relative: float = 1.25
    force_target: int = -1
    repair: bool = True
    method: str = "prune"
    prune_stop: float = 1.2
    prune_step: int = 0
    prune_max: float = 0.5
    prune_rank: str = "shift"
    peak_max_drop: float = 0.01
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128
    beta: float = 0.0
    recompute: bool = False
    freeze_head: bool = True
    crop_padding: int = -1
    surrogate_eps: float = 0.1
    surrogate_ratio: float = 0.2
    surrogate_steps: int = 150
    surrogate_lr: float = 0.05
    second_quantile: float = 0.95
    second_threshold: float = 2.0
    second_max_relative: float = 0.85
    prior: str = "auto"
    prior_ratio: float = 2.0
    prior_alpha: float = 1e-3

    def validate(self) -> None:
        if not 0 < self.quantile <= 1:
            raise TacreconError(f"quantile must be in (0, 1], got {self.quantile}")
        if self.score not in ("norm", "ratio"):
            raise TacreconError(f"score must be norm or ratio, got {self.score!r}")
        if self.rule not in ("mad", "pvalue", "both"):
            raise TacreconError(f"rule must be mad, pvalue or both, got {self.rule!r}")
        if not 0 < self.max_relative <= 1:
            raise TacreconError(f"max_relative must be in (0, 1], got {self.max_relative}")
        if self.high_relative != 0 and self.high_relative <= 1:
            raise TacreconError(f"high_relative must be 0 (off) or > 1, got {self.high_relative}")
        if self.method not in ("prune", "finetune"):
            raise TacreconError(f"method must be prune or finetune, got {self.method!r}")
        if self.prune_stop <= 0 or self.prune_step < 0 or not 0 < self.prune_max <= 1:
            raise TacreconError(f"need prune_stop > 0, prune_step >= 0 and prune_max in (0, 1], got "
                                f"{self.prune_stop}, {self.prune_step}, {self.prune_max}")
        if not 0 <= self.peak_max_drop <= 1:
            raise TacreconError(f"peak_max_drop must be in [0, 1], got {self.peak_max_drop}")
        if self.prune_rank not in ("shift", "shift_std"):
            raise TacreconError(f"prune_rank must be shift or shift_std, got {self.prune_rank!r}")
        if self.beta < 0 or self.epochs < 0:
            raise TacreconError("beta and epochs must be >= 0")
        if not 0 <= self.surrogate_eps <= 1 or not 0 < self.surrogate_ratio < 1:
            raise TacreconError(f"need surrogate_eps in [0, 1] and surrogate_ratio in (0, 1), got "
                                f"{self.surrogate_eps}, {self.surrogate_ratio}")
        if not 0 <= self.second_quantile < 1 or self.second_threshold <= 0 or not 0 < self.second_max_relative <= 1:
            raise TacreconError(f"need second_quantile in [0, 1), second_threshold > 0 and second_max_relative in "
                                f"(0, 1], got {self.second_quantile}, {self.second_threshold}, {self.second_max_relative}")
        if self.prior not in ("auto", "counts", "off") or not self.prior_ratio >= 1 or not 0 < self.prior_alpha <= 1:
            raise TacreconError(f"need prior in auto, counts, off, prior_ratio >= 1 and prior_alpha in (0, 1], got "
                                f"{self.prior!r}, {self.prior_ratio}, {self.prior_alpha}")
        if self.surrogate_steps < 1 or self.surrogate_lr <= 0:
            raise TacreconError(f"need surrogate_steps >= 1 and surrogate_lr > 0, got {self.surrogate_steps}, "
                                f"{self.surrogate_lr}")

    @property
    def quantile_or_none(self) -> float | None:
        """The quantile for the QP: None (the max over samples) when ``quantile`` is 1."""
        return None if self.quantile >= 1 else self.quantile

    def scan(self, model: nn.Module, clean: Split) -> Scan:
        """Phases 1a and 1b on ``model`` (not modified)."""
        classifier = as_classifier(model)
        if int(clean.y.max()) >= classifier.num_classes:
            raise TacreconError(f"the clean labels reach class {int(clean.y.max())} but the model has "
                                f"{classifier.num_classes} classes")
        z = latents_of(classifier, clean.x)
        qp = reconstruct(classifier, clean, self.bias, self.quantile_or_none, z)
        ratios = universality_ratios(classifier, z, clean.y, qp, self.bias)
        scores = qp.norms if self.score == "norm" else ratios
        prior = self.class_prior(scores, clean.y, classifier.num_classes)
        found = detect(corrected(scores, prior), self.threshold, self.alpha, self.rule,
                       self.max_relative, self.high_relative)
        result = Scan(qp, found, ratios, z, qp.shifts, prior=prior)
        if self.second_quantile > 0:
            self.second_look(classifier, clean, result)
        return result

    def class_prior(self, scores: Tensor, labels: Tensor, num_classes: int) -> Tensor | None:
        """The class-count prior (C,) that ``scores`` (C,) are divided by before the test, from the
        clean ``labels`` (N,); None where ``prior`` leaves the correction off."""
        counts = torch.bincount(labels.cpu(), minlength=num_classes)
        present = counts[counts > 0]
        spread = int(present.max()) >= self.prior_ratio * int(present.min())
        if self.prior == "off" or (self.prior == "auto" and not (spread and imbalance_pvalue(counts) < self.prior_alpha)):
            return None
        return count_prior(scores, counts)

    def second_look(self, model: Classifier, clean: Split, scan: Scan) -> None:
        """The robust QP (``second_quantile``), read with its own thresholds: the classes it flags
        that the plain test did not are added to ``scan.second``, and their TAC is the robust s_t."""
        robust = reconstruct(model, clean, self.bias, self.second_quantile, scan.latents)
        prior = self.class_prior(robust.norms, clean.y, model.num_classes)
        look = detect(corrected(robust.norms, prior), self.second_threshold,
                      max_relative=self.second_max_relative)
        scan.second = [k for k in look.flagged if k not in scan.detection.flagged]
        scan.shifts = scan.shifts.clone()
        scan.shifts[scan.second] = robust.shifts[scan.second]
        scan.second_qp, scan.second_detection, scan.second_prior = robust, look, prior

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        classifier = as_classifier(model)  # once: a raw module would get a new adapter (and head hook) per call
        num_classes = classifier.num_classes
        if self.force_target >= num_classes:
            raise TacreconError(f"force_target {self.force_target} is not a class of this model (0..{num_classes - 1})")
        start = time.perf_counter()
        scan = self.scan(classifier, clean)
        qp, found = scan.qp, scan.detection
        self.stats_["scan_seconds"] = time.perf_counter() - start
        self.stats_["qp_iterations"] = int(qp.iterations.sum())
        self.scores_ = {"score": self.score, "norms": qp.norms.tolist(), "ratios": scan.ratios.tolist(),
                        "anomaly_index": found.anomaly_index.tolist(), "relative": found.relative.tolist(),
                        "p_value": found.p_value, "kkt_residual": float(qp.kkt_residual.nan_to_num(0).max()),
                        "prior": None if scan.prior is None else scan.prior.tolist()}
        if scan.second_qp is not None:
            look = scan.second_detection
            self.scores_.update(second_norms=scan.second_qp.norms.tolist(),
                                second_anomaly_index=look.anomaly_index.tolist(),
                                second_relative=look.relative.tolist(),
                                second_prior=None if scan.second_prior is None else scan.second_prior.tolist())
        self.shifts_ = scan.shifts
        self.prior_ = scan.prior if self.score == "norm" else self.class_prior(qp.norms, clean.y, num_classes)
        self.second_prior_ = scan.second_prior
        self.targets_ = scan.flagged
        self.unreachable_ = found.unreachable
        self.second_ = scan.second
        self.target_ = self.targets_[0] if self.targets_ else None
        targets = [self.force_target] if self.force_target >= 0 else self.targets_
        if not targets or not self.repair:
            return
        start = time.perf_counter()
        pad = self.crop_padding if self.crop_padding >= 0 else clean.x.shape[-1] // 8
        cfg = TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, label_smoothing=0.0,
                          schedule="cosine", crop_padding=pad, flip=False, progress=True, weight_decay=5e-4)
        hook = self.surrogates(classifier, clean, targets, self.shifts_, generator)
        if self.method == "prune":
            self.prune_and_finetune(classifier, clean, targets, scan.latents, cfg, generator, hook)
        else:
            unlearn(classifier, clean, targets, self.shifts_[targets].float(), cfg, self.beta, self.recompute,
                    self.freeze_head, generator, self.bias, self.quantile_or_none, hook)
        self.stats_["repair_seconds"] = time.perf_counter() - start

    def surrogates(self, model: Classifier, clean: Split, targets: list[int], shifts: Tensor,
                   generator: torch.Generator) -> Callable | None:
        """Phase 2b: a :func:`surrogate_trigger` per target of the low side (on the model before any
        pruning), kept as ``surrogates_`` (T, C, H, W), and the fine-tune's batch hook that stamps
        them (None: off, or no such target). A class of the high side (``unreachable_``) gets none:
        its s_t is longer than any other class's, so a perturbation that reproduces it is a strong
        adversarial one, and :func:`prune_to_peak` already removes its trigger units."""
        reachable = [t for t in targets if t not in self.unreachable_ and bool(torch.isfinite(shifts[t]).all())]
        if self.surrogate_eps == 0 or self.epochs == 0 or not reachable:
            return None
        start = time.perf_counter()
        self.surrogates_ = torch.stack([surrogate_trigger(model, clean, t, shifts[t].float(), self.surrogate_eps,
                                                          self.surrogate_steps, self.batch_size, self.surrogate_lr,
                                                          generator) for t in reachable])
        with torch.no_grad():
            hits = [stand_in_success(model, clean, t, d) for t, d in zip(reachable, self.surrogates_)]
        self.stats_.update(surrogate_seconds=time.perf_counter() - start, surrogate_targets=reachable,
                           surrogate_success=hits)
        return stamp_share(self.surrogates_, self.surrogate_ratio)

    def prune_and_finetune(self, model: Classifier, clean: Split, targets: list[int], latents: Tensor,
                           cfg: TrainConfig, generator: torch.Generator, batch_hook: Callable | None = None) -> None:
        """Prune the latent units of the TACs (:func:`prune_plan`), then :func:`unlearn` with them held at 0
        (and ``batch_hook``, the surrogate triggers' stamp)."""
        head = model.get_classifier()
        d = head.weight.shape[1]
        step = self.prune_step or -(-d // 128)
        bias = head.bias if self.bias else None
        scale = latents.double().std(0).clamp_min(1e-6) if self.prune_rank == "shift_std" else None
        limit = int(self.prune_max * d)
        low = [t for t in targets if t not in self.unreachable_ and t not in self.second_]
        units, history = (prune_plan(latents, head.weight, bias, low, self.prune_stop, step, limit,
                                     self.quantile_or_none, scale, prior=self.prior_) if low else ([], []))
        second = [t for t in targets if t in self.second_]
        if second:  # found by the second look: pruned until its robust norm is typical
            more, later = prune_plan(latents, head.weight, bias, second, self.prune_stop, step, limit - len(units),
                                     self.second_quantile, scale, exclude=units, prior=self.second_prior_)
            units, history = units + more, history + later
        peaks = {}
        for t in (t for t in targets if t in self.unreachable_):
            more, peaks[t] = prune_to_peak(latents, head.weight, bias, t, step, limit - len(units),
                                           self.quantile_or_none, exclude=units, labels=clean.y,
                                           max_drop=self.peak_max_drop)
            units = units + more
        self.pruned_ = units
        self.stats_.update(pruned=len(units), latent_dim=d, relative_norms=history, unreachable_norms=peaks)
        with columns_held_at_zero(head, units):
            if self.epochs > 0:
                # the TAC that is left: s_t of the pruned model (the loss does not use it at beta 0)
                shifts = (reconstruct(model, clean, self.bias, self.quantile_or_none).shifts[targets].float()
                          if self.beta > 0 else head.weight.new_zeros(len(targets), d))
                unlearn(model, clean, targets, shifts, cfg, self.beta, self.recompute, self.freeze_head, generator,
                        self.bias, self.quantile_or_none, batch_hook)
