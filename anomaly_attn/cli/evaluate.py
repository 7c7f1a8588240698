"""Re-score a trained checkpoint: new layer or attention variant, re-calibrated on validation data.

    python -m anomaly_attn.evaluate ckpt_path=RUN/checkpoints/model.ckpt layer=encoder.15 map=gradcam
    python -m anomaly_attn.evaluate -m ckpt_path=RUN/checkpoints/model.ckpt 'layer=glob(encoder.*)'

Attention is post-hoc (no retraining). The dataset and category are the training run's (its config.yaml
next to checkpoints/) unless given; the model is the checkpoint's, so ``layer=glob(...)`` expands against
the right backbone. Thresholds are chosen again on the validation split of normal training images (the
same seeded split as in training), never on test data. Each job writes a new run directory (see
README "Outputs") whose metrics.json names its ``source_checkpoint``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.cli.jobs import exit_code_of_last_sweep, isolate_failure
from anomaly_attn.cli.quiet import quiet_third_party_output
from anomaly_attn.cli.summary import run_summary
from anomaly_attn.config.extensions import import_extensions
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from anomaly_attn.jobs.job_config import config_for_checkpoint

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)

    quiet_third_party_output()  # after Lightning's import (training.checkpoint), which adds a console handler

    def job() -> dict[str, Any]:
        from anomaly_attn.jobs.evaluate import evaluate_job

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
