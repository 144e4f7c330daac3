"""Backdoor defenses, one file each, registered in ``DEFENSES`` (every module is imported here)."""

import importlib
import pkgutil
from typing import Any

from tacrecon.defenses.base import DEFENSES, Defense

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def create_defense(name: str, **kwargs: Any) -> Defense:
    """The registered defense ``name`` with hyperparameters ``kwargs`` (unknown keys are errors)."""
    return DEFENSES.get(name).from_dict(kwargs)


__all__ = ["DEFENSES", "Defense", "create_defense"]
