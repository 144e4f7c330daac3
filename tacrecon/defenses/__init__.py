"""Backdoor defenses, one file each, registered in ``DEFENSES`` (every module is imported here)."""

import importlib
import pkgutil
from typing import Any

from tacrecon.defenses.base import DEFENSES, Defense, holdout

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def create_defense(name: str, budget: str | None = None, **kwargs: Any) -> Defense:
    """The registered defense ``name`` with its named ``budget`` (``cpu``, ``smoke``; None: the
    published recipe) and hyperparameters ``kwargs`` on top (unknown keys are errors)."""
    return DEFENSES.get(name).with_budget(budget, **kwargs)


__all__ = ["DEFENSES", "Defense", "create_defense", "holdout"]
