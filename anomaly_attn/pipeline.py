"""One job, end to end: data → model → fit → calibrate on validation → test → run directory.

The Hydra entry points (train.py, evaluate.py) are thin wrappers around these functions, so tests and
notebooks can call them with a composed config.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.callbacks import AnomalyMapVisualizer, RngStateCheckpoint, TrainingThroughput
from anomaly_attn.callbacks.attention_schedule import attention_schedule_callbacks
from anomaly_attn.data.datamodule import AnomalyDataModule
from anomaly_attn.models import create_model
from anomaly_attn.module import AnomalyModule
from anomaly_attn.safety import check_targets, scrub_secrets
from anomaly_attn.version import provenance

log = logging.getLogger(__name__)

# Config keys of a dataset yaml that describe it rather than being constructor arguments.
DATASET_META_KEYS = ("name",)


def build_dataset(cfg: DictConfig):
    """Instantiate the dataset class named by ``dataset._target_`` (only this package's, torch's,
    Lightning's or timm's classes: see ``anomaly_attn.safety.check_targets``)."""
    check_targets(OmegaConf.to_container(cfg.dataset, resolve=True), "dataset")
    kwargs = {k: v for k, v in cfg.dataset.items() if k not in DATASET_META_KEYS}
    return instantiate(OmegaConf.create(kwargs), _convert_="all")


def model_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def build_backbone(cfg: DictConfig) -> torch.nn.Module:
    kwargs = model_config(cfg)
    return create_model(kwargs.pop("name"), **kwargs)


def resolve_category(cfg: DictConfig, dataset) -> str:
    """The configured category (validated, canonical name), or the dataset's first one."""
    if cfg.category is None:
        return dataset.categories()[0]
    return dataset.check_category(str(cfg.category))


def build_module(cfg: DictConfig) -> AnomalyModule:
    return AnomalyModule(
        model=model_config(cfg),
        loss_terms=OmegaConf.to_container(cfg.loss.terms, resolve=True),
        attention=OmegaConf.to_container(cfg.attention, resolve=True),
        layer=cfg.layer,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        evaluation=OmegaConf.to_container(cfg.evaluation, resolve=True),
        center_input=bool(cfg.center_input),
        threshold_quantile=float(cfg.selection.threshold_quantile),
    )


def set_threads(cfg: DictConfig) -> None:
    """Apply ``threads`` (torch intra-op threads) when configured."""
    threads = cfg.get("threads")
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads={threads} must be a positive integer (or null for torch's default).")
        torch.set_num_threads(int(threads))


def run_name(cfg: DictConfig, category: str, layer: str) -> str:
    parts = (cfg.dataset.name, category, cfg.model.name, layer, cfg.loss.name, cfg.attention.variant)
    return "-".join(map(str, parts)) + f"-s{cfg.seed}"


def build_loggers(cfg: DictConfig, run_dir: Path, category: str, layer: str) -> list:
    loggers: list = []
    if cfg.logger.get("csv"):
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    if cfg.logger.get("wandb"):
        from lightning.pytorch.loggers import WandbLogger

        wandb_cfg = cfg.logger.wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        tags = [
            f"dataset:{cfg.dataset.name}",
            f"category:{category}",
            f"layer:{layer}",
            f"loss:{cfg.loss.name}",
            f"attention:{cfg.attention.variant}",
            f"model:{cfg.model.name}",
            *list(cfg.tags),
        ]
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                mode=wandb_cfg.mode,
                group=cfg.experiment_name,
                job_type=cfg.dataset.name,
                name=run_name(cfg, category, layer),
                tags=tags,
                config={**public_config(cfg), "provenance": provenance()},
            )
        )
    return loggers


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without anything that looks like a secret (keys, tokens, passwords)."""
    return scrub_secrets(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]


def close_wandb() -> None:
    """Finish the W&B run even when the job failed, so the next job of a sweep gets its own run."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


def write_text_atomic(path: Path, text: str) -> None:
    """Write-then-rename: a killed job never leaves a truncated file a later report would trust."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=float) + "\n")


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """The resolved config, secrets scrubbed, as the run directory's config.yaml."""
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(public_config(cfg))))


def write_per_image_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def make_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list, **overrides: Any
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer``; ``overrides`` replace its arguments (e.g. ``devices=1``)."""
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs.pop("_target_", None)
    trainer_kwargs.update(overrides)
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        enable_progress_bar=bool(int(os.environ.get("ANOMALY_ATTN_PROGRESS", "1"))),
        **trainer_kwargs,
    )


def completed_metrics(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The metrics of a job that already finished in ``run_dir`` when ``skip_completed`` is on (so a
    re-run sweep only runs what is missing), else None. Creates ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.json"
    if cfg.get("skip_completed") and metrics_path.exists():
        log.info("Skipping %s: metrics.json exists (set skip_completed=false to re-run).", run_dir)
        return json.loads(metrics_path.read_text())
    return None


def train_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one model on one category, choose its checkpoint and thresholds on validation data,
    score the test set and write the run directory. Returns the metrics written to metrics.json."""
    run_dir = Path(run_dir)
    # Also with resume=true: a sweep re-run with resume=true continues the killed jobs only.
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed

    set_threads(cfg)
    pl.seed_everything(int(cfg.seed), workers=True)
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    module = build_module(cfg)  # validates model, layer, loss, attention before any data work
    layer = module.layer
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    module.set_mean_image(datamodule.mean_image())
    write_run_config(cfg, run_dir)

    ckpt_dir = run_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume_from = str(last_ckpt) if cfg.get("resume") and last_ckpt.exists() else None
    if cfg.get("resume") and resume_from is None:
        log.warning("resume=true but %s does not exist: training from scratch.", last_ckpt)

    throughput = TrainingThroughput()
    checkpointing = pl.callbacks.ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="best",
        monitor=cfg.selection.monitor,
        mode="min",
        save_last=True,
        save_top_k=1,
        enable_version_counter=False,
    )
    visualizer = AnomalyMapVisualizer(run_dir / "figures", **OmegaConf.to_container(cfg.visualization))
    loggers = build_loggers(cfg, run_dir, category, layer)
    callbacks = [checkpointing, throughput, visualizer, RngStateCheckpoint()]
    callbacks += attention_schedule_callbacks(module.attention_cfg, module.optimizer_cfg)
    trainer = make_trainer(cfg, run_dir, loggers, callbacks)
    try:
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        fit_s = time.perf_counter() - fit_start
        epochs = completed_epochs(trainer, last_ckpt)
        trainer = scoring_trainer(cfg, run_dir, trainer, loggers, visualizer)
        if trainer is None:
            return {}  # a DDP process other than rank 0: rank 0 scores and writes the run directory

        best_path = checkpointing.best_model_path or str(last_ckpt)
        state = torch.load(best_path, map_location=module.device, weights_only=True)
        module.load_state_dict(state["state_dict"])
        metrics = score_and_write(
            cfg,
            module,
            datamodule,
            trainer,
            run_dir,
            loggers,
            extra={
                "epochs": epochs,
                "best_epoch": int(state.get("epoch", -1)),
                "resumed_from": resume_from,
                "n_train": len(datamodule.train_set),
            },
            timing={"train_images_per_s": throughput.images_per_s, "fit_s": fit_s},
        )
        return metrics
    finally:
        close_wandb()


def completed_epochs(trainer: pl.Trainer, last_ckpt: Path) -> int:
    """Epochs trained in total (resumed ones included). After a ``ddp_spawn`` fit the main process's
    trainer does not get the loop progress back (its ``current_epoch`` is 0): read it from last.ckpt."""
    if trainer.current_epoch > 0 or not last_ckpt.exists():
        return trainer.current_epoch
    state = torch.load(last_ckpt, map_location="cpu", weights_only=True, mmap=True)
    return int(state["epoch"]) + 1


def scoring_trainer(
    cfg: DictConfig, run_dir: Path, fit_trainer: pl.Trainer, loggers: list, visualizer: pl.Callback
) -> pl.Trainer | None:
    """The trainer that calibrates and scores: the fit trainer itself in a single-process run.

    After a multi-process (DDP) fit, a new one-device trainer on global rank 0 and None on the other
    ranks: DistributedSampler would pad and split the test set, and the validation quantiles and the
    per-image rows are per process, so scoring on one process gives exactly the single-process numbers
    (no duplicated or missing images). The process group is released first so that the metrics'
    ``compute()`` does not wait for the other ranks.
    """
    if fit_trainer.world_size == 1:
        return fit_trainer
    rank = fit_trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    return make_trainer(cfg, run_dir, loggers, [visualizer], devices=1, num_nodes=1, strategy="auto")


def save_model_checkpoint(module: AnomalyModule, path: Path) -> None:
    """Weights, buffers (mean image, validation thresholds) and hyper-parameters only: what
    evaluate/predict need, loadable with ``torch.load(..., weights_only=True)`` and
    ``AnomalyModule.load_from_checkpoint``. Written then renamed, so a kill leaves no torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        tmp,
    )
    os.replace(tmp, path)


def score_and_write(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: AnomalyDataModule,
    trainer: pl.Trainer,
    run_dir: Path,
    loggers: list,
    extra: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Calibrate thresholds on validation data, save model.ckpt, score the test set, write
    metrics.json and per_image_scores.csv. Shared by training and re-evaluation of a checkpoint."""
    thresholds = module.calibrate(datamodule.val_dataloader())
    final_ckpt = Path(run_dir) / "checkpoints" / "model.ckpt"
    save_model_checkpoint(module, final_ckpt)

    test_start = time.perf_counter()
    datamodule.setup("test")
    trainer.test(module, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - test_start
    n_test = len(module.per_image_rows)

    metrics = module.test_metrics()
    if not module.has_pixel_ground_truth:
        log.warning("The test set of %s/%s has no pixel masks: pixel metrics skipped.",
                    cfg.dataset.name, datamodule.category)
    metrics.update(
        dataset=cfg.dataset.name,
        category=datamodule.category,
        model=cfg.model.name,
        layer=module.layer,
        attention=module.attention_cfg["variant"],
        loss=cfg.loss.name,
        seed=int(cfg.seed),
        experiment=cfg.experiment_name,
        thresholds=thresholds,
        checkpoint=str(final_ckpt),
        n_val=len(datamodule.val_set),
        n_test=n_test,
        provenance=provenance(),
    )
    metrics.update(extra or {})
    metrics["timing"] = {
        "train_images_per_s": float("nan"),
        "fit_s": 0.0,
        **(timing or {}),
        "test_images_per_s": n_test / test_s if test_s > 0 else float("nan"),
        "test_s": test_s,
    }
    write_per_image_scores(Path(run_dir) / "per_image_scores.csv", module.per_image_rows)
    write_json_atomic(Path(run_dir) / "metrics.json", metrics)
    for logger in loggers:
        logger.log_metrics(flatten_metrics(metrics))
    log.info("Metrics written to %s", Path(run_dir) / "metrics.json")
    return metrics


def flatten_metrics(metrics: dict[str, Any], prefix: str = "test/") -> dict[str, float]:
    """Numeric leaves as 'test/pixel_auroc', 'test/baselines/residual_l2/pixel_auroc', ..."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
