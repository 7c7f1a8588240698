"""The one way a name is registered in an extension table, and the "did you mean" of a misspelt name.

Every table of names (backbones, attention variants, control maps, reconstruction and attention losses,
classical detectors, synthetic anomaly generators) is a ``Registry``: entries in registration order,
registered with ``registry.register(name)`` as a decorator or ``registry.register(name, value)``, looked
up with ``registry.get(name)``, and one rule for a taken name:

    A name is registered once. Registering it again is accepted only for the same definition, i.e. the
    same object, or the object of the same module and qualified name re-created by importing its module
    again (the new object replaces the old); anything else is a ``ValueError`` naming the name, the
    registered definition and the refused one.

An unknown name is a ``ValueError`` with the closest registered names ("Did you mean ...?") and all of
them. Each table's module offers ``list_*()`` (its sorted names) next to its own ``register_*`` decorator.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
F = TypeVar("F")


_MISSING: Any = object()


def _identity(entry: Any) -> Any:
    return entry


def _same_definition(a: Any, b: Any) -> bool:
    """The same object, or the same function/class re-created by importing its module again."""
    if a is b:
        return True
    qualname_a, qualname_b = getattr(a, "__qualname__", None), getattr(b, "__qualname__", None)
    return (
        qualname_a is not None
        and qualname_a == qualname_b
        and getattr(a, "__module__", None) == getattr(b, "__module__", None)
    )


def _describe(definition: Any) -> str:
    """``module.qualname`` of a function or class, else its repr."""
    qualname = getattr(definition, "__qualname__", None)
    return f"{definition.__module__}.{qualname}" if qualname is not None else repr(definition)


class Registry(Generic[T]):
    """Named entries of one ``kind`` (e.g. "attention variant"), kept in registration order.

    ``definition(entry)`` is what the taken-name rule compares and names in its error (default: the entry
    itself; a table whose entries wrap a function, like the attention variants, passes that function).
    Iterating, ``len``, ``in`` and ``items()`` follow registration order; ``names()`` is sorted.
    ``registry[name]`` is ``registry.get(name)``.
    """

    def __init__(self, kind: str, *, definition: Callable[[T], Any] = _identity) -> None:
        self.kind = kind
        self._definition = definition
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[F], F]: ...

    @overload
    def register(self, name: str, value: T) -> T: ...

    def register(self, name: str, value: Any = _MISSING) -> Any:
        """Put ``value`` in the table under ``name`` and return it; without ``value``, a decorator that
        registers the decorated object. A taken name follows the module docstring's rule."""
        if value is _MISSING:
            return lambda obj: self.register(name, obj)
        if name in self._entries:
            old, new = self._definition(self._entries[name]), self._definition(value)
            if not _same_definition(old, new):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_describe(old)}; "
                    f"register {_describe(new)} under another name"
                )
        self._entries[name] = value
        return value

    def get(self, name: str) -> T:
        """The entry ``name``; ``ValueError`` with the closest and all registered names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        """``unknown KIND 'name'. Did you mean 'x'? Valid: 'a', 'b'.`` (no hint when none is close)."""
        names = self.names()
        valid = ", ".join(map(repr, names))
        return f"unknown {self.kind} {name!r}.{did_you_mean(str(name), names)} Valid: {valid}."

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return list(self._entries.items())

    def snapshot(self) -> dict[str, T]:
        """A copy of the table, for ``restore`` (tests that register throw-away entries)."""
        return dict(self._entries)

    def restore(self, snapshot: Mapping[str, T]) -> None:
        """Make the table hold exactly ``snapshot`` again."""
        self._entries = dict(snapshot)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


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
