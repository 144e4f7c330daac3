"""TAC's pruning: remove the latent units that carry the reconstructed TACs, from clean latents only.

Low-side targets are pruned until their norm is typical again (:func:`prune_plan`); a high-side
target (clean-label poisoning) is pruned to the peak of its norm (:func:`prune_to_peak`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tacrecon.qp import solve_latent_qp
from tacrecon.stats import corrected, relative_scores


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
    """The latent units that carry the reconstructed TACs, removed greedily.

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
    """The trigger units of a high-side class t (:func:`~tacrecon.tac.detect.detect`), pruned to the peak of ||s_t||.

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
