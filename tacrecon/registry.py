"""A tiny name -> factory registry (timm style): ``register``, ``create``, ``names``."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Generic, TypeVar, cast

from tacrecon.errors import TacreconError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Maps names to factories (classes or functions).

    Example:
        >>> MODELS = Registry("model")
        >>> @MODELS.register("tiny")
        ... def tiny(num_classes=10): ...
        >>> MODELS.names()
        ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator that registers a factory under ``name`` (default: its ``__name__``)."""

        def decorate(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = cast(T, fn)
            try:
                fn.registered_name = key  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return fn

        return decorate

    def get(self, name: str) -> T:
        """The factory registered as ``name``; an unknown name lists the known ones."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise TacreconError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the glob ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
