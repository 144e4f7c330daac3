"""The defense interface (scikit-learn conventions).

``__init__`` only stores hyperparameters (a dataclass); ``fit(model, clean, generator)`` returns
``self`` and never modifies the input model; fitted state ends with ``_``:

* ``model_``: the defended model (a copy), in eval mode;
* ``target_``: the class the defense found poisoned, or None (no detection, or not a detector);
* ``targets_``: every flagged class (multi-target attacks);
* ``stats_``: seconds per phase and other measurements;
* ``scores_``: the per-class scores of a detecting defense (None otherwise).

Each defense names its paper (``paper``) and its compute budgets (``budgets``): the dataclass
defaults are the published recipe (BackdoorBench's config, for GPU runs); ``budgets["cpu"]`` is
the override used by the CPU protocol and ``budgets["smoke"]`` the smallest run the tests use.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from tacrecon.config import Config
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.io import jsonable
from tacrecon.registry import Registry

DEFENSES: Registry[type[Defense]] = Registry("defense")
D = TypeVar("D", bound="Defense")


@dataclass
class Defense(Config):
    """Base class: subclasses add hyperparameter fields and implement :meth:`defend`."""

    paper: ClassVar[str] = ""
    budgets: ClassVar[dict[str, dict[str, Any]]] = {}
    # bumped when a change of the code (not of a hyperparameter) changes what the defense does,
    # so that the benchmark runs the cells it finished before again (bench.runner.cell_state)
    revision: ClassVar[int] = 1

    @classmethod
    def with_budget(cls, budget: str | None = None, **overrides: Any) -> Defense:
        """This defense with the named ``budget`` (None: the published recipe) and ``overrides``."""
        if budget is not None and budget not in cls.budgets:
            known = ", ".join(cls.budgets) or "none"
            raise TacreconError(f"{cls.__name__} has no budget {budget!r}; known: {known}")
        return cls.from_dict({**(cls.budgets.get(budget, {}) if budget else {}), **overrides})

    def fit(self: D, model: nn.Module, clean: Split, generator: torch.Generator | None = None) -> D:
        """Defend a copy of ``model`` with the defender's ``clean`` split; returns ``self``.

        Args:
            model: a classifier taking images (N, C, H, W) in [0, 1].
            clean: the defender's clean labelled samples (never the test split).
            generator: CPU generator for every random choice (default: seeded 0).
        """
        if len(clean) == 0:
            raise TacreconError("the clean set is empty: a defense needs clean labelled samples")
        self.validate()
        self.model_ = copy.deepcopy(model).eval()
        self.target_: int | None = None
        self.targets_: list[int] = []
        self.stats_: dict[str, Any] = {}
        self.scores_: Any = None
        start = time.perf_counter()
        self.defend(self.model_, clean, generator or torch.Generator().manual_seed(0))
        self.stats_["seconds"] = time.perf_counter() - start
        self.model_.eval()
        return self

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        """Modify ``model`` (already a copy) in place; set ``target_``/``targets_``/``stats_``."""
        raise NotImplementedError

    def scores(self) -> Any:
        """The per-class scores a detecting defense computed (JSON-ready; None: not a detector)."""
        return self.scores_

    def record(self) -> dict[str, Any]:
        """What a run of this fitted defense records, whichever command ran it (JSON-ready)."""
        return jsonable({"defense": self.name, "defense_config": self.to_dict(), "defense_revision": self.revision,
                         "target": self.target_, "targets": list(self.targets_), "scores": self.scores(),
                         "stats": self.stats_, "seconds": self.stats_["seconds"]})

    @classmethod
    def canonical_config(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A ``defense_config`` stored by an earlier version, in the names and keys :meth:`to_dict`
        gives today (to tell a finished bench cell from a stale one)."""
        return dict(stored)

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__.lower())


def holdout(clean: Split, fraction: float, generator: torch.Generator) -> tuple[Split, Split]:
    """Split the defender's clean set into (train, validation), the validation part holding
    ``fraction`` of it (at least one sample): for choices made on clean accuracy, never on test data."""
    n_val = max(1, round(fraction * len(clean)))
    if n_val >= len(clean):
        raise TacreconError(f"cannot hold out {n_val} of {len(clean)} clean samples for validation")
    order = torch.randperm(len(clean), generator=generator)
    return clean.subset(order[n_val:].sort().values), clean.subset(order[:n_val].sort().values)


def column_mask(head: nn.Linear, pruned: Tensor | Sequence[int]) -> Tensor:
    """The (C, d) 0/1 mask of ``head.weight`` that zeroes the columns ``pruned`` (k,)."""
    mask = torch.ones_like(head.weight)
    mask[:, pruned] = 0
    return mask


@contextlib.contextmanager
def columns_held_at_zero(head: nn.Linear, pruned: Tensor | Sequence[int]) -> Iterator[None]:
    """Zero the columns ``pruned`` of ``head.weight`` and keep them 0 while the body trains (a
    ``torch.nn.utils.prune`` mask); on exit the mask is made permanent, leaving a plain Linear."""
    prune.custom_from_mask(head, "weight", column_mask(head, pruned))
    try:
        yield
    finally:
        prune.remove(head, "weight")
