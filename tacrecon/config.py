"""Dataclass configs that reject unknown keys and values of the wrong type."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Mapping, TypeVar

from tacrecon.errors import TacreconError

C = TypeVar("C", bound="Config")


def _check_type(name: str, value: Any, hint: Any) -> Any:
    """``value`` coerced to the simple type ``hint`` (int -> float allowed), else an error."""
    origin = typing.get_origin(hint)
    if hint is Any or origin is typing.Union or hint is type(None):
        return value
    container = origin if origin in (list, tuple) else hint if hint in (list, tuple) else None
    if container is not None:
        if not isinstance(value, (list, tuple)):
            raise TacreconError(f"{name} must be a list, got {value!r}")
        return container(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and
                                                 not (hint is int and isinstance(value, bool))):
        raise TacreconError(f"{name} must be {hint.__name__}, got {value!r}")
    return value


def as_stored(value: Any) -> Any:
    """``value`` as it reads back from a JSON file (tuples become lists), to compare with a record."""
    return json.loads(json.dumps(value))


def differences(a: Mapping[str, Any], b: Mapping[str, Any], labels: tuple[str, str] = ("stored", "asked")) -> str:
    """``"key: A stored, B asked; ..."`` for every key whose values differ in ``a`` and ``b``
    (missing keys read as None); nested mappings are compared key by key (``key.sub``)."""
    def flat(d: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                out[k] = v
        return out

    fa, fb = flat(a), flat(b)
    return "; ".join(f"{k}: {fa.get(k)!r} {labels[0]}, {fb.get(k)!r} {labels[1]}" for k in sorted(set(fa) | set(fb))
                     if fa.get(k) != fb.get(k))


class Config:
    """Mixin for ``@dataclass`` configs: ``from_dict`` validates keys and types."""

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any] | None = None, **overrides: Any) -> C:
        """Build a config from ``values`` (and ``overrides``); unknown keys and bad types raise."""
        merged = {**(values or {}), **overrides}
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(merged) - set(fields))
        if unknown:
            raise TacreconError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)}; known: {', '.join(fields)}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _check_type(f"{cls.__name__}.{k}", v, hints[k]) for k, v in merged.items()}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check value ranges; subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied, validated like ``from_dict``."""
        return type(self).from_dict({**self.to_dict(), **changes})
