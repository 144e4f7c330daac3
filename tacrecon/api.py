"""The Python API: scan, repair or defend any classifier ``nn.Module`` with clean tensors.

Every function takes the model and the defender's clean images (N, C, H, W) in [0, 1] with their
labels (N,), never modifies the model it is given, and finds the head (the final ``nn.Linear``
whose output is the logits) as the command line does. Hyperparameters are keyword arguments with
the flat names of ``--set`` (``threshold=3.5``, ``prune_stop=1.2``, ...).

Example:
    >>> import tacrecon  # doctest: +SKIP
    >>> result = tacrecon.scan(model, images, labels)  # doctest: +SKIP
    >>> result.target, result.relative  # doctest: +SKIP
    >>> repaired, record = tacrecon.repair(model, images, labels)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses import create_defense
from tacrecon.defenses.tac import TAC
from tacrecon.errors import TacreconError
from tacrecon.models import Classifier, HeadAdapter
from tacrecon.tac.detect import ScanResult


def clean_split(images: Tensor, labels: Tensor) -> Split:
    """The defender's clean set as a :class:`Split`, with one error line for bad tensors."""
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        raise TacreconError("images and labels must be tensors: (N, C, H, W) floats in [0, 1] and (N,) class indices")
    if images.is_floating_point() and images.numel() and not (0 <= float(images.min()) and float(images.max()) <= 1):
        raise TacreconError("images must lie in [0, 1] (the model normalizes them itself, or wrap it so that it does)")
    return Split(images.float(), labels.long())


@torch.no_grad()
def prepared(model: nn.Module, clean: Split, head: str | None = None) -> Classifier:
    """A copy of ``model`` with the classifier contract, its head located on a few clean images."""
    if isinstance(model, Classifier) and head is None:
        return copy.deepcopy(model).eval()
    module = copy.deepcopy(model).eval()
    try:
        logits = module(clean.x[:8])
    except RuntimeError as e:
        raise TacreconError(f"the model cannot run on the clean images {tuple(clean.x.shape[1:])}: "
                            f"{str(e).splitlines()[0][:200]}") from None
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise TacreconError("the model must return a tensor of logits (N, classes)")
    if not bool(torch.isfinite(logits).all()):
        raise TacreconError("the model's output on the clean images is NaN or infinite: its weights are broken")
    adapter = HeadAdapter(module, num_classes=int(logits.shape[1]), head=head)
    adapter.locate(clean.x[:8])
    return adapter


def users_model(model: nn.Module) -> nn.Module:
    """The user's own module inside an adapter (the model they passed in, defended)."""
    return model.module if isinstance(model, HeadAdapter) else model


def scan(model: nn.Module, images: Tensor, labels: Tensor, *, head: str | None = None, pairwise: bool = False,
         **config: Any) -> ScanResult:
    """Scan ``model`` for a backdoor with TAC, from clean ``images`` (N, C, H, W) and ``labels`` (N,).

    Args:
        head: the name of the final linear layer (default: found by running the model).
        pairwise: also run the opt-in pairwise look (all-to-all and source-specific backdoors;
            :mod:`tacrecon.tac.pairwise`), in ``result.pairwise``; it does not change the verdict.
        config: TAC's scan hyperparameters by flat name (``threshold``, ``robust_quantile``, ...).
    Returns:
        the :class:`~tacrecon.tac.detect.ScanResult`: ``target`` (None: no backdoor found),
        ``flagged``, ``norms``, ``relative``, ``anomaly_index``, ``shifts`` (C, d), ``seconds``,
        ``pairwise``; ``record()`` gives it as JSON.
    """
    clean = clean_split(images, labels)
    tac = TAC.from_dict({**config, "pairwise": pairwise, "repair": False})
    return tac.scan(prepared(model, clean, head), clean)


def defend(name: str, model: nn.Module, images: Tensor, labels: Tensor, *, budget: str | None = None,
           head: str | None = None, seed: int = 0, **config: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Defend ``model`` with the registered defense ``name`` (``tacrecon list defenses``) using the
    clean ``images`` (N, C, H, W) and ``labels`` (N,).

    Args:
        budget: a named budget of the defense (``cpu``, ``smoke``; None: its published recipe).
        head: the name of the final linear layer (default: found by running the model).
        seed: seeds every random choice.
        config: the defense's hyperparameters.
    Returns:
        the defended model (a new module of the type given; the input is untouched) and the
        record of the run (config, flagged classes, scores, stats, seconds).
    """
    clean = clean_split(images, labels)
    defense = create_defense(name, budget, **config)
    defense.fit(prepared(model, clean, head), clean, torch.Generator().manual_seed(seed))
    return users_model(defense.model_), defense.record()


def repair(model: nn.Module, images: Tensor, labels: Tensor, *, head: str | None = None, seed: int = 0,
           **config: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Scan ``model`` with TAC and repair every flagged class (or ``force_target``), from clean
    ``images`` (N, C, H, W) and ``labels`` (N,): :func:`defend` with ``tac``.

    Returns:
        the repaired model (the input itself is untouched; a model found clean comes back as an
        unchanged copy) and the record (``scores`` holds the scan, ``repaired`` whether it acted).
    """
    return defend("tac", model, images, labels, head=head, seed=seed, **config)
