"""dataset=folder with masks for some defect images only: each image without one is left out of the pixel
metrics (one warning lists them), not the whole run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from anomaly_attn.jobs.train import train_job
from anomaly_attn.metrics.per_defect import PerDefectMetrics
from tests.conftest import compose_cfg
from tests.fixtures import make_mvtec_tree


def test_partial_masks_leave_out_only_the_unmasked_images(tmp_path: Path, caplog) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["bottle"], size=64, n_train=12, n_per_defect=2)
    ground_truth = root / "bottle" / "ground_truth"
    removed = [
        ground_truth / "contamination" / "000_mask.png",
        ground_truth / "contamination" / "001_mask.png",
        ground_truth / "broken_large" / "001_mask.png",
    ]
    for mask in removed:
        mask.unlink()
    cfg = compose_cfg(
        [
            "dataset=folder",
            f"dataset.root={root}",
            "category=bottle",
            "dataset.image_size=64",
            "dataset.batch_size=4",
            "dataset.num_workers=0",
            "trainer.max_epochs=1",
            "logger=csv",
            "validation=none",
            "visualization.max_overlays=0",
        ]
    )
    with caplog.at_level(logging.WARNING):
        train_job(cfg, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0 and 0.0 <= metrics["pixel_aupro"] <= 1.0
    assert 0.0 <= metrics["controls"]["residual_l2"]["pixel_auroc"] <= 1.0
    assert metrics["n_test_without_mask"] == 3
    per_defect = metrics["per_defect"]
    assert "pixel_auroc" not in per_defect["contamination"] and per_defect["contamination"]["n_images"] == 2
    assert per_defect["broken_large"]["n_images_with_mask"] == 1
    assert per_defect["broken_small"]["n_images_with_mask"] == 2
    warnings = [r.getMessage() for r in caplog.records if "have no mask" in r.getMessage()]
    assert len(warnings) == 1
    for mask in removed:
        image = root / "bottle" / "test" / mask.parent.name / mask.name.replace("_mask", "")
        assert str(image) in warnings[0]


def test_per_defect_pixel_metrics_use_exactly_the_masked_images() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 1, 16, 16, generator=generator)
    masks = (torch.rand(6, 1, 16, 16, generator=generator) > 0.8).float()
    masks[:2] = 0
    scores = maps.flatten(1).amax(1)
    types = ["good", "good", "crack", "crack", "hole", "hole"]
    flags = [True, True, True, False, False, False]
    partial = PerDefectMetrics(0.3, ["crack", "hole"])
    partial.update(maps, masks, scores, types, flags)
    subset = PerDefectMetrics(0.3, ["crack", "hole"])
    subset.update(maps[:3], masks[:3], scores[:3], types[:3])
    result, expected = partial.compute(), subset.compute()
    assert result["crack"]["pixel_auroc"] == pytest.approx(expected["crack"]["pixel_auroc"], abs=1e-9)
    assert result["crack"]["n_images"] == 2 and result["crack"]["n_images_with_mask"] == 1
    assert "pixel_auroc" not in result["hole"] and result["hole"]["n_images"] == 2
