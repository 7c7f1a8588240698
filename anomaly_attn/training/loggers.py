"""The job's Lightning loggers, from the ``logger`` config group (conf/logger/).

As lightning-hydra-template's ``instantiate_loggers``: every non-null entry of ``cfg.logger`` is one logger,
instantiated by its ``_target_`` (checked by :mod:`anomaly_attn.config.safety` like every other one), so
adding a logger is one yaml in the user's config folder. A ``save_dir``, ``name`` or ``tags`` left null is
filled with the job's run directory, run name and tags; every logger then receives the job's config
(secrets scrubbed) and provenance through ``log_hyperparams``.

W&B (:func:`wandb_logger`) never fails a job: when it cannot start it warns once and is left out, and a CSV
log takes its place if the group had none. :func:`close_wandb` finishes its run in the job's ``finally``.

Configs written before loggers came by ``_target_`` held flags (``logger: {csv: true, wandb: {mode,
project, entity}}``); :func:`logger_nodes` reads that form too (``logger.csv=false`` drops the CSV log).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from anomaly_attn.config.groups import group_entries
from anomaly_attn.config.paths import CONFIG_DIR

log = logging.getLogger(__name__)

# The keys of the old flag form's ``wandb`` entry (before loggers came by ``_target_``).
LEGACY_WANDB_KEYS = frozenset({"mode", "project", "entity"})


def shipped_entry(name: str) -> DictConfig:
    """The entry ``name`` of the shipped ``conf/logger/<name>.yaml`` (``csv`` or ``wandb``)."""
    return OmegaConf.load(Path(CONFIG_DIR) / "logger" / f"{name}.yaml")[name]


def logger_nodes(cfg: DictConfig) -> DictConfig:
    """``cfg.logger`` with entries of the old flag form replaced by the shipped ones: ``csv: true`` or
    ``wandb: true`` is that logger, ``false`` drops it, and ``wandb: {mode, project, entity}`` is the
    shipped W&B entry with those values. Interpolations resolve against ``cfg`` (a copy is changed)."""
    nodes = cfg.get("logger")
    if not nodes:
        return OmegaConf.create({})
    upgraded = {}
    for name, node in nodes.items():
        if isinstance(node, bool) and name in ("csv", "wandb"):
            upgraded[name] = shipped_entry(name) if node else None
        elif name == "wandb" and isinstance(node, DictConfig) and set(node) <= LEGACY_WANDB_KEYS:
            upgraded[name] = OmegaConf.merge(shipped_entry("wandb"), node)
    if not upgraded:
        return nodes
    upgraded_cfg = copy.deepcopy(cfg)
    with open_dict(upgraded_cfg):
        for name, node in upgraded.items():
            upgraded_cfg.logger[name] = node
    return upgraded_cfg.logger


def instantiate_loggers(
    nodes: DictConfig, run_dir: Path, run_name: str, tags: list[str], hparams: dict[str, Any]
) -> list[Logger]:
    """One logger per non-null entry of ``nodes`` (the ``logger`` group, see :func:`logger_nodes`), each
    given ``hparams`` (the job's public config and provenance) through ``log_hyperparams``. A ``save_dir``,
    ``name`` or ``tags`` left null is ``run_dir``, ``run_name`` or ``tags``. An entry whose factory returns
    None could not start and said why (W&B); if no CSV logger is left, a CSV log in ``run_dir/csv`` takes
    its place, so the job still has its step logs."""
    # Keys of an entry that, left null (or empty), take the job's value.
    job_values = {"save_dir": str(run_dir), "name": run_name, "tags": list(tags)}
    loggers: list[Logger] = []
    any_failed = False
    example = "_target_: lightning.pytorch.loggers.CSVLogger, save_dir: null"
    for name, node, given in group_entries(nodes, "logger", "Lightning logger", example, job_values):
        try:
            logger = instantiate(node, _convert_="all", **given)
        except Exception as error:
            cause = error.__cause__ or error  # Hydra's InstantiationException wraps the constructor's error
            raise ValueError(
                f"logger.{name} ({node._target_}) could not be built: {type(cause).__name__}: {cause}. Fix "
                f"its arguments in the logger yaml (or install the package it needs), or drop it with "
                f"logger.{name}=null."
            ) from error
        if logger is None:
            any_failed = True
            continue
        if not isinstance(logger, Logger):
            raise ValueError(
                f"logger.{name}: {node._target_} built a {type(logger).__name__}, not a Lightning logger "
                f"(lightning.pytorch.loggers.Logger); point _target_ at a Logger class or a function "
                f"returning one."
            )
        loggers.append(logger)
    if any_failed and not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    for logger in loggers:
        logger.log_hyperparams(hparams)
    return loggers


def wandb_logger(
    save_dir: str,
    mode: str = "offline",
    project: str | None = None,
    entity: str | None = None,
    **init_kwargs: Any,
) -> WandbLogger | None:
    """A WandbLogger whose run has started (``init_kwargs``: ``group``, ``job_type``, ``name``, ``tags``,
    ... of ``wandb.init``), or None with one warning when W&B cannot start: an unwritable directory, a
    failing ``wandb.init``. W&B never fails a job; the job logs to CSV instead."""
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_dir = Path(save_dir) / "wandb"
    try:
        # wandb.init would silently fall back to the system temp folder: refuse an unwritable one here.
        wandb_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=wandb_dir).close()
        logger = WandbLogger(save_dir=str(save_dir), project=project, entity=entity, mode=mode, **init_kwargs)
        # Lightning passes anonymous=None, which W&B takes as set and answers with a deprecation warning on
        # every run; leaving it out is the same setting (W&B ignores it).
        if getattr(logger, "_wandb_init", {}).get("anonymous", False) is None:
            logger._wandb_init.pop("anonymous")
        logger.experiment  # noqa: B018 - starts the run now, so that a failure is caught here
    except Exception as error:  # noqa: BLE001 - whatever stops W&B, the job goes on without it
        message = (str(error).strip().splitlines() or [""])[0][:300]
        log.warning(
            "W&B could not start (%s: %s); this job logs to CSV only (csv/ in the run directory). Check "
            "that %s is writable (WANDB_DIR, else the run directory) and the W&B settings (logger.wandb.*), "
            "or use logger=csv.",
            type(error).__name__, message, wandb_dir,
        )
        close_wandb()
        return None
    return logger


def close_wandb() -> None:
    """Finish the W&B run even when the job failed or was interrupted, so the next job of a sweep gets
    its own run. Never raises: a W&B service that is already gone (killed by the signal that stopped
    the job) costs one warning, not the job's result."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is None:
        return
    try:
        wandb.finish()
    except Exception as error:  # noqa: BLE001 - closing a log must not fail the job
        log.warning("Could not close the W&B run cleanly (%s: %s); its offline files stay as written.",
                    type(error).__name__, error)
