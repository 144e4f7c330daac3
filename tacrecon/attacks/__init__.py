"""Backdoor attacks, one file each, registered in ``ATTACKS``."""

from typing import Any

from tacrecon.attacks import badnets, blended, none, sig  # noqa: F401  (registration)
from tacrecon.attacks.base import ATTACKS, Attack, check_images


def create_attack(name: str, **kwargs: Any) -> Attack:
    """The registered attack ``name`` with hyperparameters ``kwargs`` (unknown keys are errors)."""
    return ATTACKS.get(name).from_dict(kwargs)


__all__ = ["ATTACKS", "Attack", "check_images", "create_attack"]
