"""User extensions named by config: one module plus one yaml, nothing else edited.

A control map, gradient variant, reconstruction loss, classical detector or synthetic-anomaly generator
is registered by a decorator in its own module (``register_control``, ``register_variant``,
``register_loss``, ``register_detector``, ``register_generator``); the yaml that uses it names that module
under ``_module_`` (a dotted module path, or a list of them), e.g. ``MYDIR/attention/mine.yaml``::

    _module_: mylab.maps        # imported before the job is built; its decorators register `mine`
    variant: mine

Datasets need no ``_module_``: their yaml's ``_target_`` names the class. A module named by ``_module_``
passes the same check as a ``_target_`` (``anomaly_attn.config.safety``): this package, or a prefix the user
trusts with ``ANOMALY_ATTN_TRUSTED_TARGETS=mylab.``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from anomaly_attn.config.safety import MODULE_KEY, check_modules, extension_modules


def import_extensions(cfg: Any, where: str = "config") -> list[str]:
    """Import every module a config names under ``_module_`` (after the safety check), so its decorators
    register what the config asks for. Returns the module names."""
    modules = extension_modules(cfg, where)
    check_modules(modules)
    for key, name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(
                f"{key}={name!r} cannot be imported ({error}). Put the module on PYTHONPATH (or install "
                f"its package), or fix the dotted path in the yaml."
            ) from error
    return [name for _, name in modules]


def strip_module_key(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without ``_module_`` (a group's keys passed on as parameters)."""
    return {key: value for key, value in options.items() if key != MODULE_KEY}
