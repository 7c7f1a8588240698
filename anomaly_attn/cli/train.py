"""Train, calibrate on validation data and evaluate one job per Hydra run.

    python -m anomaly_attn.train                                   # textures/brick, defaults
    python -m anomaly_attn.train -m dataset=mvtec 'category=glob(*)' layer=encoder.14,encoder.21

Each job leaves a run directory with config.yaml, metrics.json, per_image_scores.csv,
checkpoints/ (best.ckpt, last.ckpt, model.ckpt with the validation thresholds), csv/ logs,
figures/ and, with logger=wandb, an offline W&B run under wandb/.

The task function returns the job's validation objective (anomaly_attn/cli/hpo.py), the value that
``-m hparams_search=...`` (the Optuna sweeper) maximises; never a test metric.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from anomaly_attn.cli import jobs
from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.cli.hpo import check_search_command, job_return, search_finished
from anomaly_attn.cli.jobs import exit_code_of_last_sweep, isolate_failure
from anomaly_attn.cli.quiet import quiet_third_party_output
from anomaly_attn.cli.summary import run_summary
from anomaly_attn.config.extensions import import_extensions
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config
from anomaly_attn.training.interruption import interruptible

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def train(cfg: DictConfig) -> float | dict[str, Any]:
    """One job; returns its validation objective (a float), or a failure marker (a dict) when the job
    failed in a sweep or has no validation objective (``validation=none``)."""
    from anomaly_attn.jobs.job_config import add_fixed_keys
    from anomaly_attn.jobs.train import train_job
    from anomaly_attn.training.trainer import check_ddp_launch

    quiet_third_party_output()  # after Lightning's import, which adds a second console handler

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN

    def job() -> dict[str, Any]:
        check_config(cfg, hydra_cfg)  # this job's own config (swept values included)
        import_extensions(cfg)  # the `_module_`s its yamls name register their maps, losses, generators
        check_ddp_launch(cfg.trainer, in_sweep)
        add_fixed_keys(cfg, list(hydra_cfg.overrides.task))
        # SIGTERM / submitit's time-limit signal: last.ckpt, W&B closed, then requeue; not a failure.
        with interruptible():
            return train_job(cfg, run_dir)

    # A failing job writes error.txt; in a sweep the others go on and the summary lists it.
    result = isolate_failure(job, run_dir, overrides=list(hydra_cfg.overrides.task), in_sweep=in_sweep)
    if result.get("status") != "failed":
        log.info("%s", run_summary(result, run_dir))
    # What Hydra sweepers read (hparams_search): the validation objective, never a test metric.
    return job_return(result, str(cfg.selection.objective))


def main() -> None:
    try:
        check_search_command(sys.argv[1:])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        run_hydra_app(train)
    finally:
        code = exit_code_of_last_sweep()
        summary = jobs._last_summary
        # A finished hparams_search: failed trials (e.g. a learning rate giving a NaN loss) are results
        # of the search, marked FAIL by Optuna and listed in the summary; the study itself succeeded.
        if code and summary is not None and search_finished(summary.sweep_dir):
            code = 0
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
