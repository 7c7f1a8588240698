"""Re-score a trained checkpoint: new layer or attention variant, re-calibrated on validation data.

    python -m anomaly_attn.evaluate ckpt_path=RUN/checkpoints/model.ckpt layer=encoder.15 attention=gradcam
    python -m anomaly_attn.evaluate -m ckpt_path=RUN/checkpoints/model.ckpt 'layer=glob(encoder.*)'

Attention is post-hoc (no retraining). The dataset and category are the training run's (its config.yaml
next to checkpoints/) unless given; the model is the checkpoint's, so ``layer=glob(...)`` expands against
the right backbone. Thresholds are chosen again on the validation split of normal training images (the
same seeded split as in training), never on test data. Each job writes a new run directory (see
README "Outputs") whose metrics.json names its ``source_checkpoint``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.cli.jobs import exit_code_of_last_sweep, isolate_failure
from anomaly_attn.cli.quiet import quiet_third_party_output
from anomaly_attn.cli.summary import run_summary
from anomaly_attn.config.extensions import import_extensions
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config

log = logging.getLogger(__name__)


def evaluate_job(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Score ``cfg.ckpt_path`` with ``cfg``'s layer/attention/evaluation on ``cfg``'s dataset and category
    (``cfg`` already completed by :func:`anomaly_attn.training.checkpoint.config_for_checkpoint`) and write
    ``run_dir``. Returns the metrics written to metrics.json.

    With ``selection.map=fixed`` the checkpoint's selected map is kept, unless ``overrides`` (the command
    line) set a map key (``layer=``, ``attention=``, ``attention.input=``, ...): then the configured map
    is used, as the user asked, instead of being silently replaced by the stored one."""
    import lightning.pytorch as pl

    from anomaly_attn.data.build import build_dataset, resolve_category
    from anomaly_attn.data.datamodule import AnomalyDataModule
    from anomaly_attn.training.callbacks import AnomalyMapVisualizer
    from anomaly_attn.training.checkpoint import check_checkpoint_path, load_module
    from anomaly_attn.training.pipeline import (
        build_loggers,
        close_wandb,
        fixed_keys_from_overrides,
        make_trainer,
        score_and_write,
        set_threads,
        trainer_speed,
        write_run_config,
    )

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
    try:
        return score_and_write(
            cfg,
            module,
            datamodule,
            trainer,
            run_dir,
            loggers,
            extra={"source_checkpoint": str(ckpt_path), **_source_run_fields(ckpt_path)},
        )
    finally:
        close_wandb()


def _source_run_fields(ckpt_path: Path) -> dict[str, Any]:
    """Training facts of the source run (epochs, best epoch, training set size) kept in the new metrics."""
    from anomaly_attn.training.checkpoint import run_config_path

    fields: dict[str, Any] = {}
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if "epoch" in state:
        fields["best_epoch"] = int(state["epoch"])
    config_file = run_config_path(ckpt_path)
    if config_file is not None:
        fields["source_run"] = str(config_file.parent)
        source_metrics = config_file.parent / "metrics.json"
        if source_metrics.exists():
            source = json.loads(source_metrics.read_text())
            for key in ("epochs", "best_epoch", "n_train"):
                if key in source:
                    fields.setdefault(key, source[key])
    return fields


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from anomaly_attn.training.checkpoint import config_for_checkpoint

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)

    quiet_third_party_output()  # after Lightning's import (training.checkpoint), which adds a console handler

    def job() -> dict[str, Any]:
        check_config(cfg, hydra_cfg)
        job_cfg = config_for_checkpoint(cfg, overrides)
        check_config(job_cfg)  # the source run's config.yaml is user-editable too
        import_extensions(job_cfg)
        return evaluate_job(job_cfg, run_dir, overrides)

    # error.txt in the run folder; a sweep goes on with its other jobs, a single run exits 1.
    result = isolate_failure(job, run_dir, overrides, in_sweep=hydra_cfg.mode == RunMode.MULTIRUN)
    if result.get("status") != "failed":
        log.info("%s", run_summary(result, run_dir))
    return result


def main() -> int:
    run_hydra_app(evaluate, config_name="evaluate")
    return exit_code_of_last_sweep()


if __name__ == "__main__":
    main()
