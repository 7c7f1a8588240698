"""Train, calibrate on validation data and evaluate one job per Hydra run.

    python -m anomaly_attn.train                                   # textures/brick, defaults
    python -m anomaly_attn.train -m dataset=mvtec 'category=glob(*)' layer=encoder.14,encoder.21

Each job leaves a run directory with config.yaml, metrics.json, per_image_scores.csv,
checkpoints/ (best.ckpt, last.ckpt, model.ckpt with the validation thresholds), csv/ logs,
figures/ and, with logger=wandb, an offline W&B run under wandb/.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from anomaly_attn.cli import run_hydra_app
from anomaly_attn.sweeps import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def train(cfg: DictConfig) -> dict[str, Any]:
    from anomaly_attn.pipeline import train_job

    return train_job(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    run_hydra_app(train)


if __name__ == "__main__":
    main()
