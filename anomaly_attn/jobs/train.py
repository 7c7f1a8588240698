"""The training job: data → model → fit → choose on validation → test → run directory.

    metrics = train_job(cfg, run_dir)       # cfg: a composed config (conf/config.yaml)

``python -m anomaly_attn.train`` runs this per Hydra job; tests and notebooks call it directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.config.resolvers import VALIDATION_OBJECTIVE
from anomaly_attn.data.build import build_dataset, resolve_category
from anomaly_attn.data.synthetic_validation import SyntheticValidation
from anomaly_attn.jobs.finish import choose_test_and_record
from anomaly_attn.run.store import completed_metrics, write_run_config
from anomaly_attn.training.callbacks import AnomalyMapVisualizer, TrainingThroughput
from anomaly_attn.training.callbacks.attention_schedule import attention_schedule_callbacks
from anomaly_attn.training.callbacks.validation_objective import ValidationObjective
from anomaly_attn.training.datamodule import AnomalyDataModule
from anomaly_attn.training.interruption import requeued_attempt
from anomaly_attn.training.loggers import close_wandb
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.restoration import Restoration
from anomaly_attn.training.selection_step import selection_settings, synthetic_validation
from anomaly_attn.training.trainer import (
    build_callbacks,
    build_loggers,
    build_module,
    completed_epochs,
    make_trainer,
    scoring_trainer,
    set_threads,
    trainer_speed,
)

log = logging.getLogger(__name__)


def train_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one model on one category, choose its map, checkpoint and thresholds on validation data,
    score the test set and write the run directory. Returns the metrics written to metrics.json."""
    run_dir = Path(run_dir)
    # Also with resume=true: a sweep re-run with resume=true continues the killed jobs only.
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed
    set_threads(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    module, datamodule = prepare(cfg)
    write_run_config(cfg, run_dir)
    # Built before training: a validation split too small, or images too small for a generator, fail now.
    synthetic = synthetic_validation(cfg, datamodule, run_dir) if cfg.validation.generators else None
    fit = FitSetup.build(cfg, module, datamodule, run_dir, synthetic)
    try:
        fit_start = time.perf_counter()
        fit.trainer.fit(module, datamodule=datamodule, ckpt_path=fit.resume_from, weights_only=True)
        fit_s = time.perf_counter() - fit_start
        epochs = completed_epochs(fit.trainer, fit.last_ckpt)
        trainer = scoring_trainer(cfg, run_dir, fit.trainer, fit.loggers, fit.visualizer)
        if trainer is None:
            return {}  # a DDP process other than rank 0: rank 0 scores and writes the run directory
        state = torch.load(fit.best_path(), map_location=module.device, weights_only=True)
        module.load_state_dict(state["state_dict"])
        facts = {
            "epochs": epochs,
            "best_epoch": int(state.get("epoch", -1)),
            "resumed_from": fit.resume_from,
            "n_train": len(datamodule.train_set),
            "training": fit.training_format,
        }
        if module.restoration is not None:
            facts["restoration"] = module.restoration.record()
        timing = {"train_images_per_s": fit.throughput.images_per_s, "fit_s": fit_s}
        return choose_test_and_record(
            cfg, module, datamodule, trainer, run_dir, fit.loggers, facts, timing, synthetic
        )
    finally:
        close_wandb()


def prepare(cfg: DictConfig) -> tuple[AnomalyModule, AnomalyDataModule]:
    """The module and the category's data, checked in the order that fails fastest: model, layer, loss,
    map and the selection grid and the trainer's speed keys before any data work."""
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    module = build_module(cfg)
    selection_settings(cfg, module)
    speed = trainer_speed(cfg)
    module.configure_speed(channels_last=speed.channels_last, compile_training=speed.compile)
    module.restoration = Restoration.from_config(
        cfg.get("restoration") or {}, list(cfg.validation.generators or []), int(cfg.seed)
    )
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    module.set_mean_image(datamodule.mean_image())
    return module, datamodule


@dataclass
class FitSetup:
    """The trainer of a fit with its callbacks and loggers, and where it resumes from."""

    trainer: pl.Trainer
    loggers: list
    visualizer: AnomalyMapVisualizer
    throughput: TrainingThroughput
    checkpointing: pl.callbacks.ModelCheckpoint | None
    last_ckpt: Path
    resume_from: str | None
    training_format: dict[str, Any]

    def best_path(self) -> str:
        """The checkpoint the run keeps: the monitored best, else last.ckpt."""
        return (self.checkpointing.best_model_path if self.checkpointing else "") or str(self.last_ckpt)

    @classmethod
    def build(
        cls, cfg: DictConfig, module: AnomalyModule, datamodule: AnomalyDataModule, run_dir: Path,
        synthetic: SyntheticValidation | None = None,
    ) -> FitSetup:
        ckpt_dir = run_dir / "checkpoints"
        last_ckpt = ckpt_dir / "last.ckpt"
        resume_from = resume_checkpoint(cfg, last_ckpt)
        throughput = TrainingThroughput()
        configured = build_callbacks(cfg, ckpt_dir)  # conf/callbacks/: best/last checkpoints, RNG, signal
        checkpoints = [c for c in configured if isinstance(c, pl.callbacks.ModelCheckpoint)]
        visualizer = AnomalyMapVisualizer(run_dir / "figures", **OmegaConf.to_container(cfg.visualization))
        loggers = build_loggers(cfg, run_dir, datamodule.category, module.layer)
        callbacks = [*checkpoints, throughput, visualizer, *(c for c in configured if c not in checkpoints)]
        callbacks += attention_schedule_callbacks(module.attention_cfg, module.optimizer_cfg)
        # val_objective: keep the checkpoint that detects synthetic anomalies best.
        if cfg.selection.monitor == VALIDATION_OBJECTIVE:
            if synthetic is None:
                raise ValueError(
                    f"selection.monitor={VALIDATION_OBJECTIVE} scores checkpoints on the synthetic "
                    "validation set, but validation=none builds none; choose a validation set "
                    "(validation=mixed) or selection.monitor=val_loss"
                )
            callbacks.append(ValidationObjective(
                synthetic, str(cfg.selection.objective), int(cfg.dataset.batch_size),
                int(cfg.selection.max_map_size),
            ))
        trainer = make_trainer(cfg, run_dir, loggers, callbacks)
        return cls(
            trainer=trainer,
            loggers=loggers,
            visualizer=visualizer,
            throughput=throughput,
            checkpointing=next((c for c in checkpoints if c.monitor is not None), None),
            last_ckpt=last_ckpt,
            resume_from=resume_from,
            # How training ran (bf16 autocast only where trainer.cpu_bf16 / trainer.precision turned it on).
            training_format={"precision": str(trainer.precision), "channels_last": module.channels_last},
        )


def resume_checkpoint(cfg: DictConfig, last_ckpt: Path) -> str | None:
    """last.ckpt when the job resumes (``resume=true``, or a SLURM requeue of this job) and it exists."""
    resume = bool(cfg.get("resume")) or requeued_attempt() > 0
    resume_from = str(last_ckpt) if resume and last_ckpt.exists() else None
    if resume and resume_from is None:
        log.warning("resume=true but %s does not exist: training from scratch.", last_ckpt)
    elif resume_from is not None and not cfg.get("resume"):
        log.info("SLURM requeued this job (attempt %d): resuming from %s.", requeued_attempt() + 1, last_ckpt)
    return resume_from
