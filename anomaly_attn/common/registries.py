"""The one way a name is registered in an extension table (control maps, losses, classical detectors,
synthetic generators): a decorator that refuses a second, different definition under a taken name."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


def _same_definition(a: Any, b: Any) -> bool:
    """The same object, or the same function re-created by importing its module again."""
    return a is b or (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )


def register_in(table: MutableMapping[str, Any], kind: str, name: str) -> Callable[[T], T]:
    """Decorator: put the decorated object in ``table`` under ``name``; a different one already there is
    a ``ValueError`` naming both (``kind`` says what the table holds, e.g. "control map")."""

    def register(obj: T) -> T:
        existing = table.get(name)
        if existing is not None and not _same_definition(existing, obj):
            raise ValueError(
                f"{kind} {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
                f"register {obj.__module__}.{obj.__qualname__} under another name"
            )
        table[name] = obj
        return obj

    return register
