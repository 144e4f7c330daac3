"""Backdoor attacks, one file each, registered in ``ATTACKS``.

Every module of this package is imported here, so a new file with a registered attack needs no
other change.
"""

import importlib
import pkgutil
from typing import Any

from tacrecon.attacks.base import ATTACKS, Attack, check_images

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def create_attack(name: str, **kwargs: Any) -> Attack:
    """The registered attack ``name`` with hyperparameters ``kwargs`` (unknown keys are errors)."""
    return ATTACKS.get(name).from_dict(kwargs)


__all__ = ["ATTACKS", "Attack", "check_images", "create_attack"]
