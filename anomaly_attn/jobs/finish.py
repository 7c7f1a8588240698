"""The end of a training or re-evaluation job, shared by both: choose the map and thresholds on
validation data, save ``model.ckpt``, score the test set once, and write the run record.

Nothing before ``trainer.test`` reads the test split; the post-hoc analysis (``selection.posthoc_test``)
runs after the choice is made and tested, and is labelled as such.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from anomaly_attn.data.synthetic_validation import SyntheticValidation
from anomaly_attn.maps.controls import CONTROL_MAPS
from anomaly_attn.metrics.interval_inputs import IntervalInputs, IntervalSettings, collect_intervals
from anomaly_attn.run.record import SELECTED, RunRecord
from anomaly_attn.run.store import (
    METRICS_FILE,
    SCORES_FILE,
    flatten_metrics,
    job_fingerprint,
    write_per_image_scores,
    write_record,
)
from anomaly_attn.training.datamodule import AnomalyDataModule
from anomaly_attn.training.faithfulness_step import faithfulness_of_run
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.selection_step import (
    ValidationChoice,
    choose_on_validation,
    posthoc_test_analysis,
    validation_metrics,
)
from anomaly_attn.training.trainer import describe_selection_to_loggers, save_model_checkpoint

log = logging.getLogger(__name__)


def choose_test_and_record(
    cfg: DictConfig,
    module: AnomalyModule,
    datamodule: AnomalyDataModule,
    trainer: pl.Trainer,
    run_dir: Path,
    loggers: list,
    facts: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
    synthetic: SyntheticValidation | None = None,
) -> dict[str, Any]:
    """Choose the map and thresholds on validation data, save model.ckpt, test once, and write
    metrics.json and per_image_scores.csv. ``facts``: training facts for the record (epochs, ...);
    ``timing``: the fit's timings. Returns the metrics.json content."""
    run_dir = Path(run_dir)
    choice = choose_on_validation(cfg, module, datamodule, run_dir, synthetic)
    describe_selection_to_loggers(loggers, module)
    final_ckpt = run_dir / "checkpoints" / "model.ckpt"
    save_model_checkpoint(module, final_ckpt)

    test_start = time.perf_counter()
    datamodule.setup("test")
    module.interval_inputs = IntervalInputs(
        module.engine.map_names, IntervalSettings.from_config(cfg.get("intervals")),
        fpr_limit=float(module.evaluation["fpr_limit"]),
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    test_s = time.perf_counter() - test_start
    warn_missing_masks(cfg, module, datamodule)

    record = test_record(cfg, module, datamodule, choice)
    intervals_start = time.perf_counter()
    record.intervals = collect_intervals(module.interval_inputs)
    if record.intervals is not None:
        module.interval_inputs.save_parts(run_dir / "interval_parts.npz")
    module.interval_inputs = None
    intervals_s = time.perf_counter() - intervals_start
    faithfulness_start = time.perf_counter()
    record.faithfulness = faithfulness_of_run(cfg, module.engine, datamodule.test_set, choice.selection)
    faithfulness_s = time.perf_counter() - faithfulness_start
    record.facts.update(checkpoint=str(final_ckpt), **(facts or {}))
    n_test = len(module.per_image_rows)
    record.timing = {
        "train_images_per_s": float("nan"),
        "fit_s": 0.0,
        **(timing or {}),
        "test_images_per_s": n_test / test_s if test_s > 0 else float("nan"),
        "test_s": test_s,
        "intervals_s": intervals_s,
        "faithfulness_s": faithfulness_s,
    }
    write_per_image_scores(run_dir / SCORES_FILE, module.per_image_rows)
    metrics = write_record(run_dir, record)
    for logger in loggers:
        logger.log_metrics(flatten_metrics(metrics))
    log.info("Metrics written to %s", run_dir / METRICS_FILE)
    return metrics


def test_record(
    cfg: DictConfig, module: AnomalyModule, datamodule: AnomalyDataModule, choice: ValidationChoice
) -> RunRecord:
    """The run record of a tested module: test metrics of the selected map and the controls, their
    validation scores, the selection block, the run's identity and counts."""
    tested = module.test_metrics()
    controls = tested.pop("controls")
    record = RunRecord(test=tested, controls=controls, identity=run_identity(cfg, module, datamodule))
    if choice.synthetic is not None:
        validation = validation_metrics(module, choice.synthetic, cfg)
        record.validation = validation[SELECTED]
        for name in CONTROL_MAPS:
            controls[name]["validation"] = validation[name]
    if choice.selection is not None:
        record.selection = choice.selection.summary()
        if cfg.selection.get("posthoc_test"):
            posthoc = posthoc_test_analysis(cfg, module, datamodule, choice.selection)
            record.selection.update(
                **posthoc,
                candidates=[candidate.to_dict() for candidate in choice.selection.candidates],
                posthoc_note="test scores of every candidate: post-hoc analysis, never used to choose",
            )
    record.facts = {
        "n_test_without_mask": len(module.images_without_masks),
        "thresholds": choice.thresholds,
        "n_val": len(datamodule.val_set),
        "n_test": len(module.per_image_rows),
    }
    record.provenance = job_fingerprint(cfg)
    return record


def run_identity(cfg: DictConfig, module: AnomalyModule, datamodule: AnomalyDataModule) -> dict[str, Any]:
    """What a run is: dataset, category, model, the selected map (its layer, variant and label), the
    image score, loss, seed and experiment (RunRecord's identity fields)."""
    spec = module.engine.map_spec
    return {
        "dataset": cfg.dataset.name,
        "category": datamodule.category,
        "model": cfg.model.name,
        "layer": spec.layer,
        "variant": spec.variant or spec.source,
        "selected_map": spec.label,
        "image_score": module.engine.score_spec.label,
        "loss": cfg.loss.name,
        "seed": int(cfg.seed),
        "experiment": cfg.experiment_name,
    }


def warn_missing_masks(cfg: DictConfig, module: AnomalyModule, datamodule: AnomalyDataModule) -> None:
    """Say when pixel metrics are skipped (no masks at all) or leave anomalous images out (some)."""
    if not module.has_pixel_ground_truth:
        log.warning("The test set of %s/%s has no pixel masks: pixel metrics skipped.",
                    cfg.dataset.name, datamodule.category)
    elif module.images_without_masks:
        missing = module.images_without_masks
        log.warning(
            "%d anomalous test image(s) of %s/%s have no mask and are left out of the pixel metrics "
            "(image metrics include them): %s%s",
            len(missing), cfg.dataset.name, datamodule.category, ", ".join(missing[:20]),
            f", ... ({len(missing) - 20} more)" if len(missing) > 20 else "",
        )
