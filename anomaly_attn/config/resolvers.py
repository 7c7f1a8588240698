"""The OmegaConf resolvers that ``conf/`` uses, registered on import (``config.paths`` imports this
module, so everything that composes or resolves a config has them). Torch-free."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

VALIDATION_OBJECTIVE = "val_objective"
"""``selection.monitor`` value of the synthetic-validation objective
(``training.callbacks.validation_objective``)."""


def monitor_mode(monitor: str) -> str:
    """``${anomaly_attn.monitor_mode:${selection.monitor}}``: ``max`` for ``val_objective`` (higher detects
    better), ``min`` for losses; read by the checkpoint and early-stopping callbacks."""
    return "max" if str(monitor) == VALIDATION_OBJECTIVE else "min"


OmegaConf.register_new_resolver("anomaly_attn.monitor_mode", monitor_mode, replace=True)


MAX_DIRNAME_BYTES = 200
"""Longest job folder name kept as is (file systems allow 255 bytes per name; room for Hydra's suffixes)."""


def job_dirname(name: str) -> str:
    """``${anomaly_attn.job_dirname:${hydra.job.override_dirname}}``: a sweep job's folder name. Kept as
    is up to ``MAX_DIRNAME_BYTES``; a longer one (many overrides: 'File name too long' took the whole
    sweep down) is cut there and ends in a digest of the full name, so every job keeps its own folder
    and a re-run finds it again (skip_completed, resume). The job's config.yaml keeps every override."""
    encoded = str(name).encode("utf-8")
    if len(encoded) <= MAX_DIRNAME_BYTES:
        return str(name)
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    tail = f"…{digest}"
    head = encoded[: MAX_DIRNAME_BYTES - len(tail.encode("utf-8"))].decode("utf-8", errors="ignore")
    return head + tail


OmegaConf.register_new_resolver("anomaly_attn.job_dirname", job_dirname, replace=True)
