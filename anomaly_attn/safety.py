"""What configs may do: which classes they may instantiate, and which values must never be written.

- ``check_targets``: a config may only instantiate classes of this package, Lightning, torch and timm.
  A dataset yaml is user-editable (and an override can set ``dataset._target_``); Hydra's
  ``instantiate`` would import and call anything it names.
- ``looks_secret`` / ``scrub_secrets``: keys, tokens and passwords are replaced by ``***`` in every
  config a run writes (config.yaml, the W&B run config).
- ``check_no_secret_overrides``: a secret typed on the command line would end up in Hydra's own
  records (``.hydra/overrides.yaml``, ``multirun.yaml``) and in sweep folder names, which no scrubbing
  reaches; so it is refused before Hydra starts, pointing at the environment instead.
"""

from __future__ import annotations

import re
from typing import Any

ALLOWED_TARGET_PREFIXES = ("anomaly_attn.", "lightning.", "pytorch_lightning.", "torch.", "timm.")

# Last component of a config key that holds a secret: api_key, wandb_key, token, password, secret ...
# ("exclude_keys" or "keypoints" are not secrets; "max_tokens" is scrubbed, harmlessly.)
_SECRET_NAME = re.compile(r"(^|_)(api_?key|key)$|token|passw|secret|credential")


class UnsafeConfigError(ValueError):
    """A config asks for something this framework refuses to do (foreign class, literal secret)."""


def check_targets(node: Any, where: str = "config") -> None:
    """Raise ``UnsafeConfigError`` if any ``_target_`` under ``node`` (dicts/lists, recursively) names
    something outside ``ALLOWED_TARGET_PREFIXES``."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise UnsafeConfigError(
                f"{where}._target_={target!r} is refused: configs may only instantiate classes from "
                f"{', '.join(p.rstrip('.') for p in ALLOWED_TARGET_PREFIXES)}. To add a dataset, write "
                f"a class in anomaly_attn/data/ and point its yaml's _target_ at it."
            )
        for key, value in node.items():
            if key != "_target_":
                check_targets(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            check_targets(value, f"{where}[{index}]")


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
