"""The OmegaConf resolvers that ``conf/`` uses, registered on import (``config.paths`` imports this
module, so everything that composes or resolves a config has them). Torch-free."""

from __future__ import annotations

from omegaconf import OmegaConf

VALIDATION_OBJECTIVE = "val_objective"
"""``selection.monitor`` value of the synthetic-validation objective
(``training.callbacks.validation_objective``)."""


def monitor_mode(monitor: str) -> str:
    """``${anomaly_attn.monitor_mode:${selection.monitor}}``: ``max`` for ``val_objective`` (higher detects
    better), ``min`` for losses; read by the checkpoint and early-stopping callbacks."""
    return "max" if str(monitor) == VALIDATION_OBJECTIVE else "min"


OmegaConf.register_new_resolver("anomaly_attn.monitor_mode", monitor_mode, replace=True)
