"""The one way a name is registered in an extension table (control maps, losses, classical detectors,
synthetic generators): a decorator that refuses a second, different definition under a taken name."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, MutableMapping
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


def close_names(value: str, valid: Iterable[str]) -> list[str]:
    """Up to three valid names closest to ``value`` (a misspelling's likely intent), best first."""
    return difflib.get_close_matches(str(value), [str(name) for name in valid], n=3, cutoff=0.6)


def did_you_mean(value: str, valid: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean 'x'?`` naming the closest valid names, each after ``prefix`` (empty when none is
    close)."""
    close = close_names(value, valid)
    return " Did you mean " + " or ".join(repr(prefix + name) for name in close) + "?" if close else ""


def unknown_name(key: str, value: object, valid: Iterable[str]) -> str:
    """The message for a name that is not registered: the key, the closest names, every valid name."""
    names = sorted(str(name) for name in valid)
    return f"{key}={value!r} is not registered.{did_you_mean(str(value), names)} Valid: {', '.join(names)}."
