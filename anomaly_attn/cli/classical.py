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
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.cli.jobs import exit_code_of_last_sweep, isolate_failure
from anomaly_attn.cli.quiet import quiet_third_party_output
from anomaly_attn.config.extensions import import_extensions, strip_module_key
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config

log = logging.getLogger(__name__)

# Keys of conf/detector/*.yaml that are not parameters of the estimator.
_FEATURE_KEYS = ("name", "features", "pixel_size", "backbone", "pretrained")


def classical_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the configured detector on the training images, score the test images, write ``run_dir``."""
    from anomaly_attn.classical.detectors import create_detector, make_featurizer
    from anomaly_attn.data.build import build_dataset, resolve_category
    from anomaly_attn.data.datamodule import AnomalyDataModule
    from anomaly_attn.training.pipeline import (
        completed_metrics,
        job_fingerprint,
        write_json_atomic,
        write_per_image_scores,
        write_run_config,
    )
    from anomaly_attn.metrics import f1_max, image_auroc

    quiet_third_party_output()  # after Lightning's import (training.pipeline), which adds a console handler
    run_dir = Path(run_dir)
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed

    detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
    params = {key: value for key, value in strip_module_key(detector_cfg).items() if key not in _FEATURE_KEYS}
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    write_run_config(cfg, run_dir)

    featurize = make_featurizer(
        detector_cfg["features"],
        in_channels=dataset.channels,
        pixel_size=int(detector_cfg.get("pixel_size", 32)),
        backbone=detector_cfg.get("backbone", "resnet18"),
        pretrained=bool(detector_cfg.get("pretrained", False)),
    )
    train_features = featurize(datamodule.train_images_tensor())
    detector = create_detector(detector_cfg["name"], len(train_features), int(cfg.seed), **params)
    fit_start = time.perf_counter()
    detector.fit(train_features)
    fit_s = time.perf_counter() - fit_start

    test_set = datamodule.test_set
    score_start = time.perf_counter()
    scores = detector.score(featurize(test_set.images_tensor()))
    score_s = time.perf_counter() - score_start
    labels = np.array([record.label for record in test_set.records])

    metrics: dict[str, Any] = {
        "image_auroc": image_auroc(scores, labels),
        "image_f1_max": f1_max(scores, labels),
        "dataset": cfg.dataset.name,
        "category": category,
        "model": f"classical:{detector_cfg['name']}",
        "features": detector_cfg["features"],
        "detector": detector_cfg,
        "seed": int(cfg.seed),
        "experiment": cfg.experiment_name,
        "n_train": len(train_features),
        "n_val": len(datamodule.val_set),
        "n_test": len(scores),
        "provenance": job_fingerprint(cfg),
        "timing": {"fit_s": fit_s, "test_s": score_s, "test_images_per_s": len(scores) / max(score_s, 1e-9)},
    }
    rows = [
        {"path": str(record.path), "defect_type": record.defect_type, "label": record.label, "score": score}
        for record, score in zip(test_set.records, scores.tolist(), strict=True)
    ]
    write_per_image_scores(run_dir / "per_image_scores.csv", rows)
    write_json_atomic(run_dir / "metrics.json", metrics)
    log.info("%s on %s/%s: image AUROC %.3f -> %s", metrics["model"], cfg.dataset.name, category,
             metrics["image_auroc"], run_dir / "metrics.json")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="classical")
def classical(cfg: DictConfig) -> dict[str, Any]:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)

    def job() -> dict[str, Any]:
        check_config(cfg, hydra_cfg)
        import_extensions(cfg)
        return classical_job(cfg, run_dir)

    # error.txt in the run folder; a sweep goes on with its other jobs, a single run exits 1.
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    return isolate_failure(job, run_dir, list(hydra_cfg.overrides.task), in_sweep=in_sweep)


def main() -> int:
    run_hydra_app(classical, config_name="classical")
    return exit_code_of_last_sweep()


OLD_GROUP = "baseline"


def renamed_argument(argument: str) -> str:
    """An override in the old spelling (``baseline=knn``, ``baseline.pixel_size=8``, ``+baseline.x=1``,
    ``~baseline.x``) in the new one (``detector=...``); anything else unchanged."""
    prefix = argument[: len(argument) - len(argument.lstrip("+~"))]
    rest = argument[len(prefix) :]
    for separator in ("=", "."):
        if rest.startswith(OLD_GROUP + separator):
            return prefix + "detector" + rest[len(OLD_GROUP) :]
    return argument


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
