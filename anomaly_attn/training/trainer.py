"""The Lightning pieces of a job: the module from the config, the Trainer, its callbacks and loggers,
the thread count, and the model checkpoint that evaluate and predict load.

The jobs (``anomaly_attn.jobs``) assemble these; nothing here reads the test split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.common.atomic import atomic_path
from anomaly_attn.common.progress import progress_enabled
from anomaly_attn.config.groups import group_entries
from anomaly_attn.models.registry import model_config
from anomaly_attn.run.store import job_fingerprint, public_config
from anomaly_attn.training.loggers import instantiate_loggers, logger_nodes
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.speed import SpeedOptions, resolve_precision, speed_options


def build_module(cfg: DictConfig) -> AnomalyModule:
    return AnomalyModule(
        model=model_config(cfg),
        loss_terms=OmegaConf.to_container(cfg.loss.terms, resolve=True),
        attention=OmegaConf.to_container(cfg.map, resolve=True),
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
    parts = (cfg.dataset.name, category, cfg.model.name, layer, cfg.loss.name, cfg.map.variant)
    return "-".join(map(str, parts)) + f"-s{cfg.seed}"


def build_callbacks(cfg: DictConfig, ckpt_dir: Path) -> list[pl.Callback]:
    """The ``callbacks`` group's callbacks (conf/callbacks/), instantiated like lightning-hydra-template's:
    every non-null entry by its ``_target_``; a ``dirpath``/``last_ckpt`` left null is ``ckpt_dir``."""
    nodes = cfg.get("callbacks") or OmegaConf.create({})
    fill = {"dirpath": str(ckpt_dir), "last_ckpt": str(ckpt_dir / "last.ckpt")}
    example = "_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val_loss"
    entries = group_entries(nodes, "callbacks", "callback", example, fill)
    return [instantiate(node, **given) for _, node, given in entries]


def run_tags(cfg: DictConfig, category: str, layer: str) -> list[str]:
    """The job's tags (W&B): dataset, category, layer, loss, map and model, then ``cfg.tags``."""
    return [
        f"dataset:{cfg.dataset.name}",
        f"category:{category}",
        f"layer:{layer}",
        f"loss:{cfg.loss.name}",
        f"map:{cfg.map.variant}",
        f"model:{cfg.model.name}",
        *list(cfg.tags),
    ]


def build_loggers(cfg: DictConfig, run_dir: Path, category: str, layer: str) -> list[pl.loggers.Logger]:
    """The ``logger`` group's loggers (conf/logger/, ``anomaly_attn.training.loggers``) for this job: its run
    directory, run name and tags where an entry leaves them null, its public config and provenance."""
    return instantiate_loggers(
        logger_nodes(cfg),
        run_dir,
        run_name(cfg, category, layer),
        run_tags(cfg, category, layer),
        hparams={**public_config(cfg), "provenance": job_fingerprint(cfg)},
    )


TRAINER_TARGETS = ("lightning.pytorch.Trainer", "pytorch_lightning.Trainer", "lightning.Trainer")


def make_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list, **overrides: Any
) -> pl.Trainer:
    """A Trainer from ``cfg.trainer``; ``overrides`` replace its arguments (e.g. ``devices=1``). The
    speed keys (``channels_last``, ``cpu_bf16``, ``compile``: :func:`trainer_speed`) are not Trainer
    arguments; ``cpu_bf16`` decides ``precision`` on CPUs (``training.speed.resolve_precision``)."""
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    target = trainer_kwargs.pop("_target_", TRAINER_TARGETS[0])
    if target not in TRAINER_TARGETS:
        raise ValueError(
            f"trainer._target_={target!r}: the pipeline builds a Lightning Trainer itself, so "
            f"trainer._target_ must be {TRAINER_TARGETS[0]} (or be left out). Put Trainer arguments under "
            "trainer.* and extra callbacks in a callback class of this package."
        )
    trainer_kwargs.update(overrides)
    if "plugins" not in trainer_kwargs and submitit_on_slurm():
        # One requeue mechanism: submitit's (it requeues on its preemption signal after the job has
        # stopped, anomaly_attn.training.interruption); Lightning's own SLURM auto-requeue would be a second.
        from lightning.fabric.plugins.environments import SLURMEnvironment

        trainer_kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs, speed_options(trainer_kwargs))
    return pl.Trainer(
        default_root_dir=str(run_dir),
        logger=loggers if loggers else False,
        callbacks=callbacks,
        enable_progress_bar=progress_enabled(),
        **trainer_kwargs,
    )


def submitit_on_slurm() -> bool:
    """True inside a job that submitit started on SLURM."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return "SUBMITIT_FOLDER" in os.environ and SLURMEnvironment.detect()


def trainer_speed(cfg: DictConfig) -> SpeedOptions:
    """The speed options of ``cfg.trainer`` (``anomaly_attn.training.speed``), checked."""
    return speed_options(OmegaConf.to_container(cfg.trainer, resolve=True))


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


def describe_selection_to_loggers(loggers: list, module: AnomalyModule) -> None:
    """The selected map and image score into every logger's hyper-parameters (the W&B run's config, the
    CSV log's hparams.yaml), next to the configured keys."""
    map_spec = module.engine.map_spec
    chosen = {
        "selected_map": map_spec.label,
        "selected_layer": map_spec.layer,
        "selected_variant": map_spec.variant or map_spec.source,
        "image_score": module.engine.score_spec.label,
    }
    for logger in loggers:
        logger.log_hyperparams(chosen)


def save_model_checkpoint(module: AnomalyModule, path: Path) -> None:
    """Weights, buffers (mean image, validation thresholds) and hyper-parameters only: what
    evaluate/predict need, loadable with ``torch.load(..., weights_only=True)`` and
    ``AnomalyModule.load_from_checkpoint``. Written then renamed, so a kill leaves no torn file."""
    state = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "selected_maps": module.engine.selected_maps_state(),
        "pytorch-lightning_version": pl.__version__,
    }
    memory = module.engine.memory_state()
    if memory is not None:  # the training patches a selected feature-memory map needs
        state["feature_memory"] = memory
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def check_ddp_launch(trainer_cfg: DictConfig, in_sweep: bool) -> None:
    """Refuse Lightning's re-launching ``ddp`` strategy inside a sweep on one machine.

    With ``strategy=ddp`` and no cluster launcher, Lightning starts the extra processes by running the
    original command line again, which in a Hydra multirun (``-m``) would start the whole sweep again
    in every child and hang. ``ddp_spawn`` starts them from inside the job instead; under SLURM,
    torchelastic, LSF or MPI the processes are started by the cluster and ``ddp`` is fine.
    """
    strategy = str(trainer_cfg.get("strategy", "auto"))
    devices = trainer_cfg.get("devices", 1)
    if not in_sweep or strategy not in ("ddp", "ddp_find_unused_parameters_true") or devices in (1, "1", [0]):
        return
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    environments = (SLURMEnvironment, TorchElasticEnvironment, LSFEnvironment, MPIEnvironment)
    if any(environment.detect() for environment in environments):
        return
    raise ValueError(
        f"trainer.strategy={strategy} with trainer.devices={devices} cannot run inside a sweep (-m) on one "
        "machine: Lightning would re-run the whole sweep command in every extra process. Use "
        "trainer.strategy=ddp_spawn, or hydra/launcher=submitit_slurm with tasks_per_node = devices."
    )
