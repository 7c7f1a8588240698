"""The classical-detector job (image level, no Lightning): fit a detector on a category's training
images (the validation split held out, as for the models), score its test images, write the run record.

    metrics = classical_job(cfg, run_dir)    # cfg: a composed conf/classical.yaml
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.classical.detectors import create_detector, make_featurizer
from anomaly_attn.config.extensions import strip_module_key
from anomaly_attn.data.build import build_dataset, resolve_category
from anomaly_attn.data.splits import CategorySplits
from anomaly_attn.metrics import f1_max, image_auroc
from anomaly_attn.metrics.interval_inputs import IntervalSettings
from anomaly_attn.metrics.intervals import image_metric_samples, resample_weights, summarize
from anomaly_attn.run.record import RunRecord
from anomaly_attn.run.store import (
    METRICS_FILE,
    SCORES_FILE,
    completed_metrics,
    job_fingerprint,
    write_per_image_scores,
    write_record,
    write_run_config,
)

log = logging.getLogger(__name__)

# Keys of conf/detector/*.yaml that are not parameters of the estimator.
_FEATURE_KEYS = ("name", "features", "pixel_size", "backbone", "pretrained")


def classical_job(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the configured detector on the training images, score the test images, write ``run_dir``."""
    run_dir = Path(run_dir)
    completed = completed_metrics(cfg, run_dir)
    if completed is not None:
        return completed
    detector_cfg = OmegaConf.to_container(cfg.detector, resolve=True)
    params = {key: value for key, value in strip_module_key(detector_cfg).items() if key not in _FEATURE_KEYS}
    dataset = build_dataset(cfg)
    category = resolve_category(cfg, dataset)
    splits = CategorySplits(dataset, category=category, seed=int(cfg.seed))
    splits.setup("fit")
    write_run_config(cfg, run_dir)

    featurize = make_featurizer(
        detector_cfg["features"],
        in_channels=dataset.channels,
        pixel_size=int(detector_cfg.get("pixel_size", 32)),
        backbone=detector_cfg.get("backbone", "resnet18"),
        pretrained=bool(detector_cfg.get("pretrained", False)),
    )
    train_features = featurize(splits.train_images_tensor())
    detector = create_detector(detector_cfg["name"], len(train_features), int(cfg.seed), **params)
    fit_start = time.perf_counter()
    detector.fit(train_features)
    fit_s = time.perf_counter() - fit_start

    test_set = splits.test_set
    score_start = time.perf_counter()
    scores = detector.score(featurize(test_set.images_tensor()))
    score_s = time.perf_counter() - score_start
    labels = np.array([record.label for record in test_set.records])
    record = RunRecord(
        test={"image_auroc": image_auroc(scores, labels), "image_f1_max": f1_max(scores, labels)},
        identity={"dataset": cfg.dataset.name, "category": category,
                  "model": f"classical:{detector_cfg['name']}", "seed": int(cfg.seed),
                  "experiment": cfg.experiment_name},
        extra={"features": detector_cfg["features"], "detector": detector_cfg},
        facts={"n_train": len(train_features), "n_val": len(splits.val_set), "n_test": len(scores)},
        provenance=job_fingerprint(cfg),
        timing={"fit_s": fit_s, "test_s": score_s, "test_images_per_s": len(scores) / max(score_s, 1e-9)},
        intervals=image_intervals(cfg.get("intervals"), scores, labels),
    )
    rows = [
        {"path": str(image.path), "defect_type": image.defect_type, "label": image.label,
         **({} if image.defect_probability is None else {"defect_probability": image.defect_probability}),
         "score": score}
        for image, score in zip(test_set.records, scores.tolist(), strict=True)
    ]
    write_per_image_scores(run_dir / SCORES_FILE, rows)
    metrics = write_record(run_dir, record)
    log.info("%s on %s/%s: image AUROC %.3f -> %s", metrics["model"], cfg.dataset.name, category,
             metrics["image_auroc"], run_dir / METRICS_FILE)
    return metrics


def image_intervals(node: Any, scores: np.ndarray, labels: np.ndarray) -> dict[str, Any] | None:
    """metrics.json ``intervals`` of a classical run: the image AUROC and F1-max of its one score
    (``maps.score``, the csv's ``score`` column) by the training runs' stratified bootstrap over test images,
    with the same settings (``intervals`` node) and so the same resamples of the same test images; None
    when ``resamples`` is 0."""
    settings = IntervalSettings.from_config(node)
    if settings.resamples == 0:
        return None
    weights = resample_weights(labels, settings.resamples, settings.seed)
    samples = image_metric_samples(scores, labels, weights)
    return {
        "method": "stratified bootstrap over test images (anomalous and normal resampled separately)",
        "resamples": settings.resamples, "level": settings.level, "seed": settings.seed,
        "maps": {"score": {metric: summarize(values, settings.level) for metric, values in samples.items()}},
    }
