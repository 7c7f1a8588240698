"""Load a trained checkpoint as a LightningModule (what ``evaluate`` tests with).

A checkpoint is ``checkpoints/model.ckpt`` (weights, mean image, validation thresholds, hyper-parameters),
or Lightning's ``best.ckpt`` / ``last.ckpt``; all load with ``weights_only=True`` (no pickled code runs).
Reading one needs no Lightning (``anomaly_attn.maps.engine``: ``MapEngine.from_checkpoint`` is what
``predict`` uses); the configuration it was trained with is ``anomaly_attn.jobs.job_config``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.maps.checkpoints import check_checkpoint_path, read_checkpoint
from anomaly_attn.training.module import AnomalyModule


def load_module(
    ckpt_path: str | Path, cfg: DictConfig | None = None, map_location: str | torch.device = "cpu"
) -> AnomalyModule:
    """The ``AnomalyModule`` of a checkpoint, with ``cfg``'s layer, attention, evaluation and threshold
    quantile applied when given (post-hoc: attention needs no retraining; thresholds must then be
    re-calibrated on validation data)."""
    path = check_checkpoint_path(ckpt_path)
    overrides: dict[str, Any] = {}
    if cfg is not None:
        overrides = {
            "layer": cfg.layer,
            "attention": OmegaConf.to_container(cfg.map, resolve=True),
            "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
            "threshold_quantile": float(cfg.selection.threshold_quantile),
        }
    read_checkpoint(path, overrides)  # checks the file, imports the maps' modules (users' `_module_`)
    module = AnomalyModule.load_from_checkpoint(
        str(path), map_location=map_location, weights_only=True, **overrides
    )
    module.eval()
    return module
