"""Classical detectors (image-level), one Hydra job per (dataset, category, detector).

    python -m anomaly_attn.classical dataset=textures category=brick detector=knn
    python -m anomaly_attn.classical -m 'category=glob(*)' detector=knn,ocsvm,iforest,lof,kmeans
    python -m anomaly_attn.classical detector=kmeans detector.features=backbone

The detector is fit on the category's training images (the validation split held out, as for the
models) and scores the test images with a continuous score. Each job writes a run directory with
``metrics.json`` (``image_auroc``, ``image_f1_max``, ``dataset``, ``category``,
``model="classical:NAME"``, ...), ``per_image_scores.csv`` and ``config.yaml``.
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

from anomaly_attn.cli.arguments import renamed_group, run_hydra_app
from anomaly_attn.cli.jobs import exit_code_of_last_sweep, isolate_failure
from anomaly_attn.cli.quiet import quiet_third_party_output
from anomaly_attn.config.extensions import import_extensions
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="classical")
def classical(cfg: DictConfig) -> dict[str, Any]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)

    def job() -> dict[str, Any]:
        from anomaly_attn.jobs.classical import classical_job

        quiet_third_party_output()  # one line per log record, third-party noise dropped
        check_config(cfg, hydra_cfg)
        import_extensions(cfg)
        return classical_job(cfg, run_dir)

    # error.txt in the run folder; a sweep goes on with its other jobs, a single run exits 1.
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    return isolate_failure(job, run_dir, list(hydra_cfg.overrides.task), in_sweep=in_sweep)


def main() -> int:
    run_hydra_app(classical, config_name="classical")
    return exit_code_of_last_sweep()


def renamed_argument(argument: str) -> str:
    """An override in the old spelling (``baseline=knn``, ``baseline.pixel_size=8``, ``+baseline.x=1``,
    ``~baseline.x``) in the new one (``detector=...``); anything else unchanged."""
    return renamed_group(argument, "baseline", "detector")


def main_under_old_name() -> int:
    """``python -m anomaly_attn.baselines`` (and ``anomaly-attn-baselines``), the command's name before the
    word *classical detectors* replaced *baselines*: the same job, old overrides translated, one warning."""
    renamed = [renamed_argument(argument) for argument in sys.argv[1:]]
    print(
        "note: `anomaly_attn.baselines` is now `python -m anomaly_attn.classical` (config group `detector=`, "
        "keys `detector.*`); running it with the new names.",
        file=sys.stderr,
    )
    sys.argv[1:] = renamed
    return main()


if __name__ == "__main__":
    main()
