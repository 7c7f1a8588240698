"""What configs may do: which classes they may instantiate, and which values must never be written.

- ``check_config``: a config may only instantiate classes of this package, the parts of Lightning, torch
  and timm a job is built from, and the shipped Hydra launchers/sweepers; never ``torch.hub`` or anything
  that unpickles or loads code. Yamls are user-editable and any override can set a ``_target_``
  (``trainer._target_=...``, ``hydra.callbacks.x._target_=...``); Hydra's ``instantiate`` would import and
  call anything it names. Every entry point checks the whole composed config (Hydra's node included)
  before Hydra starts, and each job checks its own config again before it builds anything.
- ``looks_secret`` / ``scrub_secrets``: keys, tokens and passwords are replaced by ``***`` in every
  config a run writes (config.yaml, the W&B run config).
- ``check_no_secret_overrides``: a secret typed on the command line would end up in Hydra's own
  records (``.hydra/overrides.yaml``, ``multirun.yaml``) and in sweep folder names, which no scrubbing
  reaches; so it is refused before Hydra starts, pointing at the environment instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# What a config may instantiate (``_target_``): this package, the parts of Lightning/torch/timm a training
# job is built from, and the Hydra launchers/sweepers the project ships configs for.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "anomaly_attn.",
    "lightning.pytorch.",
    "pytorch_lightning.",
    "torch.nn.",
    "torch.optim.",
    "torch.utils.data.",
    "timm.",
    "hydra._internal.core_plugins.",
    "hydra_plugins.hydra_joblib_launcher.",
    "hydra_plugins.hydra_submitit_launcher.",
    "hydra_plugins.hydra_optuna_sweeper.",
    "optuna.samplers.",
    "optuna.pruners.",
)
# Never, whatever else allows them: code fetched from the network, or unpickled/compiled/loaded from files.
DENIED_TARGET_PREFIXES: tuple[str, ...] = (
    "torch.hub",
    "torch.load",
    "torch.package",
    "torch.jit.load",
    "torch.utils.cpp_extension",
    "torch.utils.model_zoo",
    "torch.ops.load_library",
    "torch.classes.load_library",
    "timm.models.load_checkpoint",
    "timm.models._hub",
    "lightning.pytorch.core.saving",
)
# Logging configs (``hydra.job_logging``/``hydra.hydra_logging``) name classes too (``class``, ``()``).
ALLOWED_LOGGING_PREFIXES: tuple[str, ...] = ("logging.", "hydra.", "colorlog.")
# Last component of a config key that holds a secret: api_key, wandb_key, token, password, secret ...
# ("exclude_keys" or "keypoints" are not secrets; "max_tokens" is scrubbed, harmlessly.)
_SECRET_NAME = re.compile(r"(^|_)(api_?key|key)$|token|passw|secret|credential")

TRUSTED_TARGETS_ENV = "ANOMALY_ATTN_TRUSTED_TARGETS"
# The key under which a yaml names the modules it needs imported (config/extensions.py).
MODULE_KEY = "_module_"
"""Comma-separated module prefixes a user trusts in addition (their own extensions: ``mylab.datasets.``)."""


class UnsafeConfigError(ValueError):
    """A config asks for something this framework refuses to do (foreign class, literal secret)."""


def trusted_prefixes(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The allowed prefixes plus those of ``$ANOMALY_ATTN_TRUSTED_TARGETS``."""
    extra = tuple(p.strip() for p in environ.get(TRUSTED_TARGETS_ENV, "").split(",") if p.strip())
    return ALLOWED_TARGET_PREFIXES + extra


def target_refusal(target: str, allowed: tuple[str, ...] | None = None) -> str | None:
    """Why ``target`` may not be instantiated (None: it may)."""
    name = str(target)
    if any(name == d or name.startswith(d + ".") or name.startswith(d + "_") for d in DENIED_TARGET_PREFIXES):
        return "it loads code or pickled objects from files or the network"
    if not name.startswith(allowed or trusted_prefixes()):
        return "it is outside the classes configs may instantiate"
    return None


def check_targets(node: Any, where: str = "config") -> None:
    """Raise ``UnsafeConfigError`` if any ``_target_`` under ``node`` (dicts/lists, recursively) is refused
    by :func:`target_refusal`."""
    allowed = trusted_prefixes()
    if isinstance(node, Mapping):
        target = node.get("_target_")
        if target is not None and (why := target_refusal(str(target), allowed)) is not None:
            raise UnsafeConfigError(
                f"{where}._target_={target!r} is refused: {why}. Configs may only instantiate classes "
                f"from {', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES[:7])} and the shipped "
                f"Hydra launchers/sweepers (never torch.hub or torch.load). To add a dataset, model or "
                f"callback, write a class in anomaly_attn/ (or trust your own package with "
                f"{TRUSTED_TARGETS_ENV}=mypackage.) and point its yaml's _target_ at it."
            )
        for key, value in node.items():
            if key != "_target_":
                check_targets(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            check_targets(value, f"{where}[{index}]")


def check_modules(modules: list[tuple[str, str]]) -> None:
    """Raise ``UnsafeConfigError`` if a module named by a config (``(where, dotted name)``, e.g. an
    extension's ``_module_``) may not be imported: the same rule as ``_target_``."""
    allowed = trusted_prefixes()
    for where, name in modules:
        # A module path has no trailing class: "mylab.maps" is allowed by the prefix "mylab.".
        if (why := target_refusal(name + ".", allowed)) is not None:
            raise UnsafeConfigError(
                f"{where}={name!r} is refused: {why}. Configs may only import modules of anomaly_attn or of "
                f"a package you trust with {TRUSTED_TARGETS_ENV}=mypackage. (comma-separated prefixes)."
            )


def _check_logging_classes(node: Any, where: str) -> None:
    if isinstance(node, Mapping):
        for key in ("class", "()"):
            value = node.get(key)
            if isinstance(value, str) and not value.startswith(ALLOWED_LOGGING_PREFIXES):
                raise UnsafeConfigError(
                    f"{where}.{key}={value!r} is refused: logging configs may only name classes from "
                    f"{', '.join(p.rstrip('.') for p in ALLOWED_LOGGING_PREFIXES)}."
                )
        for key, value in node.items():
            _check_logging_classes(value, f"{where}.{key}")


def _container(node: Any) -> Any:
    """A plain container of an OmegaConf node, resolved where possible (a ``${now:}`` or
    ``${hydra:...}`` that cannot resolve outside a running app is kept unresolved)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception:  # unresolvable interpolations: the _target_ strings themselves are literal
        return OmegaConf.to_container(node, resolve=False)


def extension_modules(node: Any, where: str = "config") -> list[tuple[str, str]]:
    """``(where, dotted module)`` for every ``_module_`` under ``node`` (dicts/lists, recursively)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    found: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == MODULE_KEY:
                names = value if isinstance(value, (list, tuple)) else [value]
                for name in names:
                    if not isinstance(name, str) or not name.strip():
                        raise ValueError(
                            f"{where}.{MODULE_KEY}={value!r}: give a dotted module path (mylab.maps) or a "
                            f"list of them"
                        )
                    found.append((f"{where}.{MODULE_KEY}", name.strip()))
            else:
                found.extend(extension_modules(value, f"{where}.{key}"))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found.extend(extension_modules(value, f"{where}[{index}]"))
    return found


def check_config(cfg: Any, hydra_cfg: Any = None) -> None:
    """Check every ``_target_`` of a composed config (dataset, model, trainer, logger, callbacks, ...)
    and of Hydra's own node (callbacks, launcher, sweeper; logging classes), before anything is
    instantiated. ``hydra_cfg``: Hydra's node when ``cfg`` does not hold it (inside a task function)."""
    plain = _container(cfg)
    hydra_node = plain.pop("hydra", None) if isinstance(plain, dict) else None
    if hydra_cfg is not None:
        hydra_node = _container(hydra_cfg)
    check_targets(plain, "config")
    check_modules(extension_modules(plain, "config"))
    if isinstance(hydra_node, Mapping):
        check_targets(hydra_node, "hydra")
        for key in ("job_logging", "hydra_logging"):
            _check_logging_classes(hydra_node.get(key), f"hydra.{key}")


def looks_secret(key: str) -> bool:
    """Whether a config key (dotted or not) names a secret, judged by its last component."""
    return bool(_SECRET_NAME.search(str(key).rsplit(".", 1)[-1].lower()))


def scrub_secrets(node: Any) -> Any:
    """A copy of a plain container with the values of secret-looking keys replaced by ``***``."""
    if isinstance(node, dict):
        return {k: "***" if looks_secret(k) else scrub_secrets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub_secrets(v) for v in node]
    return node


def check_no_secret_overrides(args: list[str]) -> None:
    """Refuse ``key=VALUE`` command-line overrides whose key looks secret and whose value is a literal
    (an ``${oc.env:...}`` interpolation is fine: Hydra records it unresolved)."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if looks_secret(key) and value and not value.strip("'\"").startswith("${"):
            raise UnsafeConfigError(
                f"override {key}=... looks like a secret typed on the command line; it would be saved "
                f"in .hydra/overrides.yaml and in sweep folder names. Pass it through the environment "
                f"instead (e.g. WANDB_API_KEY=...), or as {key}='${{oc.env:MY_SECRET}}'."
            )
