"""Train, calibrate on validation data and evaluate one job per Hydra run.

    python -m anomaly_attn.train                                   # textures/brick, defaults
    python -m anomaly_attn.train -m dataset=mvtec 'category=glob(*)' layer=encoder.14,encoder.21

Each job leaves a run directory with config.yaml, metrics.json, per_image_scores.csv,
checkpoints/ (best.ckpt, last.ckpt, model.ckpt with the validation thresholds), csv/ logs,
figures/ and, with logger=wandb, an offline W&B run under wandb/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from anomaly_attn.cli import run_hydra_app
from anomaly_attn.configs import CONFIG_DIR
from anomaly_attn.interruption import interruptible
from anomaly_attn.jobs import check_ddp_launch, exit_code_of_last_sweep, isolate_failure
from anomaly_attn.safety import check_config


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def train(cfg: DictConfig) -> dict[str, Any]:
    from anomaly_attn.pipeline import add_fixed_keys, train_job

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN

    def job() -> dict[str, Any]:
        check_config(cfg, hydra_cfg)  # this job's own config (swept values included)
        check_ddp_launch(cfg.trainer, in_sweep)
        add_fixed_keys(cfg, list(hydra_cfg.overrides.task))
        # SIGTERM / submitit's time-limit signal: last.ckpt, W&B closed, then requeue; not a failure.
        with interruptible():
            return train_job(cfg, run_dir)

    # A failing job writes error.txt; in a sweep the others go on and the summary lists it.
    return isolate_failure(job, run_dir, overrides=list(hydra_cfg.overrides.task), in_sweep=in_sweep)


def main() -> None:
    try:
        run_hydra_app(train)
    finally:
        code = exit_code_of_last_sweep()
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
