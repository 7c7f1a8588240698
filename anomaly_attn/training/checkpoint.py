"""Load a trained checkpoint as a LightningModule, and the configuration it was trained with (evaluate).

A checkpoint is ``checkpoints/model.ckpt`` (weights, mean image, validation thresholds, hyper-parameters),
or Lightning's ``best.ckpt`` / ``last.ckpt``; all load with ``weights_only=True`` (no pickled code runs).
Reading one needs no Lightning (``anomaly_attn.maps.engine``: ``MapEngine.from_checkpoint`` is what
``predict`` uses); this module adds the ``AnomalyModule`` that ``evaluate`` tests with. Its run
directory's ``config.yaml`` (next to ``checkpoints/``) says which dataset and category it was trained on,
so a re-evaluation needs only the checkpoint path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.maps.engine import check_checkpoint_path, read_checkpoint, read_hyper_parameters

log = logging.getLogger(__name__)

# Taken from the training run's config.yaml unless the command line overrides them.
RUN_CONFIG_KEYS = ("dataset", "category", "seed", "loss", "selection", "validation", "center_input")
# Taken from the checkpoint's hyper-parameters (what the weights were built with) unless overridden;
# the model itself can never be overridden: the weights fix it.
HPARAM_KEYS = {"attention": "attention", "layer": "layer", "evaluation": "evaluation"}


def run_config_path(ckpt_path: str | Path) -> Path | None:
    """``<run dir>/config.yaml`` for ``<run dir>/checkpoints/X.ckpt`` (or next to the file), if present."""
    path = Path(ckpt_path).resolve()
    for folder in (path.parent.parent, path.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _override_keys(overrides: list[str]) -> list[str]:
    """Keys (``dataset``, ``dataset.root``, ``layer``, ...) set by plain command-line overrides."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.key_or_group for o in parsed if not o.is_delete() and not o.key_or_group.startswith("hydra")]


def config_for_checkpoint(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` (the composed evaluate/predict config) with the checkpoint's training setup filled in.

    The model comes from the checkpoint's hyper-parameters; dataset, category, seed, loss and selection
    from the run's config.yaml (or ``cfg``'s defaults when the checkpoint has no run directory);
    attention, layer and evaluation from the hyper-parameters. Every key named in ``overrides`` (the
    command line) keeps ``cfg``'s value instead. The dataset is read at the model's image size and
    channels, so a model can be evaluated on another dataset.
    """
    hparams = read_hyper_parameters(cfg.ckpt_path)
    keys = _override_keys(overrides)
    if any(key == "model" or key.startswith("model.") for key in keys):
        raise ValueError(
            "the model is fixed by the checkpoint's weights and cannot be overridden; "
            "drop the model override."
        )
    result = cfg.copy()
    with open_dict(result):
        config_file = run_config_path(cfg.ckpt_path)
        if config_file is not None:
            run_cfg = OmegaConf.load(config_file)
            for key in RUN_CONFIG_KEYS:
                if key in run_cfg:
                    result[key] = run_cfg[key]
        else:
            log.warning(
                "No config.yaml next to %s: dataset and category come from the command line or defaults.",
                cfg.ckpt_path,
            )
        for key, hparam in HPARAM_KEYS.items():
            value = hparams.get(hparam)
            if value is not None:
                result[key] = OmegaConf.create(value) if isinstance(value, dict) else value
        result.center_input = bool(hparams.get("center_input", True))
        result.model = OmegaConf.create(hparams["model"])
        # Group overrides (dataset=mvtec) before leaf overrides (dataset.root=...) so both survive.
        for key in sorted(set(keys), key=lambda k: k.count(".")):
            OmegaConf.update(result, key, OmegaConf.select(cfg, key), force_add=True)
        result.dataset.image_size = int(hparams["model"]["image_size"])
        result.dataset.channels = int(hparams["model"]["in_channels"])
    # What the command line fixes (layer=, attention=, ...) selection keeps, as in training.
    from anomaly_attn.training.pipeline import add_fixed_keys

    add_fixed_keys(result, overrides)
    return result


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
            "attention": OmegaConf.to_container(cfg.attention, resolve=True),
            "evaluation": OmegaConf.to_container(cfg.evaluation, resolve=True),
            "threshold_quantile": float(cfg.selection.threshold_quantile),
        }
    read_checkpoint(path, overrides)  # checks the file, imports the maps' modules (users' `_module_`)
    module = AnomalyModule.load_from_checkpoint(
        str(path), map_location=map_location, weights_only=True, **overrides
    )
    module.eval()
    return module
