"""Classical detectors (image-level), one Hydra job per (dataset, category, baseline).

    python -m anomaly_attn.baselines dataset=textures category=brick baseline=knn
    python -m anomaly_attn.baselines -m 'category=glob(*)' baseline=knn,ocsvm,iforest,lof,kmeans
    python -m anomaly_attn.baselines baseline=kmeans baseline.features=backbone

The detector is fit on the category's training images (the validation split held out, as for the
models) and scores the test images with a continuous score. Each job writes a run directory with
``metrics.json`` (``image_auroc``, ``image_f1_max``, ``dataset``, ``category``,
``model="baseline:NAME"``, ...), ``per_image_scores.csv`` and ``config.yaml``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.arguments import run_hydra_app
from anomaly_attn.config.extensions import import_extensions, strip_module_key
from anomaly_attn.config.paths import CONFIG_DIR
from anomaly_attn.config.safety import check_config

log = logging.getLogger(__name__)

# Keys of conf/baseline/*.yaml that are not parameters of the estimator.
_FEATURE_KEYS = ("name", "features", "pixel_size", "backbone", "pretrained")


def baseline_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the configured detector on the training images, score the test images, write ``run_dir``."""
    from anomaly_attn.classical.detectors import create_detector, make_featurizer
    from anomaly_attn.data.datamodule import AnomalyDataModule
    from anomaly_attn.engine.pipeline import (
        build_dataset,
        completed_metrics,
        job_fingerprint,
        resolve_category,
        write_json_atomic,
        write_per_image_scores,
        write_run_config,
    )
    from anomaly_attn.metrics import f1_max, image_auroc

    run_dir = Path(run_dir)
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed

    baseline = OmegaConf.to_container(cfg.baseline, resolve=True)
    params = {key: value for key, value in strip_module_key(baseline).items() if key not in _FEATURE_KEYS}
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    datamodule = AnomalyDataModule(dataset, category=category, seed=int(cfg.seed))
    datamodule.setup("fit")
    write_run_config(cfg, run_dir)

    featurize = make_featurizer(
        baseline["features"],
        in_channels=dataset.channels,
        pixel_size=int(baseline.get("pixel_size", 32)),
        backbone=baseline.get("backbone", "resnet18"),
        pretrained=bool(baseline.get("pretrained", False)),
    )
    train_features = featurize(datamodule.train_images_tensor())
    detector = create_detector(baseline["name"], len(train_features), int(cfg.seed), **params)
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
        "model": f"baseline:{baseline['name']}",
        "features": baseline["features"],
        "baseline": baseline,
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


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="baselines")
def baselines(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg, HydraConfig.get())
    import_extensions(cfg)
    return baseline_job(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    run_hydra_app(baselines, config_name="baselines")


if __name__ == "__main__":
    main()
