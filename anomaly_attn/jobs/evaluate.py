"""The re-evaluation job: a trained checkpoint scored with a new layer or map, chosen and calibrated again
on validation data (never test data), written to a new run directory that names its source checkpoint.

    metrics = evaluate_job(cfg, run_dir, overrides)   # cfg from jobs.job_config.config_for_checkpoint
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.data.build import build_dataset, resolve_category
from anomaly_attn.jobs.finish import choose_test_and_record
from anomaly_attn.jobs.job_config import fixed_keys_from_overrides
from anomaly_attn.maps.checkpoints import check_checkpoint_path
from anomaly_attn.run.store import read_metrics, run_config_path, write_run_config
from anomaly_attn.training.callbacks import AnomalyMapVisualizer
from anomaly_attn.training.checkpoint import load_module
from anomaly_attn.training.datamodule import AnomalyDataModule
from anomaly_attn.training.loggers import close_wandb
from anomaly_attn.training.trainer import build_loggers, make_trainer, set_threads, trainer_speed

log = logging.getLogger(__name__)


def evaluate_job(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` with ``cfg``'s layer/map/evaluation on ``cfg``'s dataset and category
    (``cfg`` already completed by :func:`anomaly_attn.jobs.job_config.config_for_checkpoint`) and write
    ``run_dir``. Returns the metrics written to metrics.json.

    With ``selection.map=fixed`` the checkpoint's selected map is kept, unless ``overrides`` (the command
    line) set a map key (``layer=``, ``map=``, ``map.input=``, ...): then the configured map is used, as
    the user asked, instead of being silently replaced by the stored one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = check_checkpoint_path(cfg.ckpt_path).resolve()
    set_threads(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    module = load_module(ckpt_path, cfg)
    module.configure_speed(channels_last=trainer_speed(cfg).channels_last)  # the maps' memory format
    command_line_map_keys = fixed_keys_from_overrides(list(overrides or []))
    if cfg.selection.map == "fixed" and command_line_map_keys:
        module.engine.use_configured_maps()
        log.info(
            "selection.map=fixed with %s on the command line: the configured map (%s) replaces the "
            "checkpoint's selected one.", ", ".join(command_line_map_keys), module.engine.map_spec.label
        )
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    write_run_config(cfg, run_dir)

    visualizer = AnomalyMapVisualizer(run_dir / "figures", **OmegaConf.to_container(cfg.visualization))
    loggers = build_loggers(cfg, run_dir, category, module.layer)
    trainer = make_trainer(cfg, run_dir, loggers, [visualizer])
    facts = {"source_checkpoint": str(ckpt_path), **source_run_facts(ckpt_path)}
    try:
        return choose_test_and_record(cfg, module, datamodule, trainer, run_dir, loggers, facts)
    finally:
        close_wandb()


def source_run_facts(ckpt_path: Path) -> dict[str, Any]:
    """Training facts of the source run (epochs, best epoch, training set size) kept in the new record."""
    fields: dict[str, Any] = {}
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "epoch" in state:
        fields["best_epoch"] = int(state["epoch"])
    config_file = run_config_path(ckpt_path)
    if config_file is not None:
        fields["source_run"] = str(config_file.parent)
        try:
            source = read_metrics(config_file.parent)
        except (OSError, ValueError):
            source = {}
        for key in ("epochs", "best_epoch", "n_train"):
            if key in source:
                fields.setdefault(key, source[key])
    return fields
