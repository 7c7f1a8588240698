"""One reading of a boolean option, wherever it comes from (YAML, a command line, an environment)."""

from __future__ import annotations

from typing import Any

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off", "none", "null", "")


def parse_flag(value: Any, key: str) -> bool:
    """``value`` as a boolean; ``key`` (e.g. ``dataset.download``) names it in the error. A command line
    gives strings, and "false" must mean False (the research code's flag took the string "False" as
    true); anything but a yes/no word is an error, not a guess."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{key}={value!r} is not a boolean; use true or false.")
