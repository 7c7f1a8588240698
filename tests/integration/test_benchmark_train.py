"""Training jobs on generated VisA and MVTec AD 2 trees, through the functions the CLI calls.

VisA: the split comes from ``split_csv/1cls.csv`` and the masks hold 1..N, so a finite pixel AUROC proves
the masks were binarized with ``> 0`` (with ``> 127`` every test mask would be empty). MVTec AD 2: the
official ``validation/good`` images are the validation split. The dataset roots are never written to.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from anomaly_attn.data.errors import MissingDataError
from anomaly_attn.jobs.train import train_job
from tests.benchmark_trees import VISA_DEFECT_TYPES, make_mvtec_ad2_tree, make_visa_tree
from tests.conftest import compose_cfg
from tests.fixtures import snapshot_tree
from tests.integration.test_real_layouts import tiny


def test_visa_trains_and_evaluates_one_epoch(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path / "visa", ["candle"], n_train=4, n_test_good=2, n_anomalous=2)
    before = snapshot_tree(root)
    overrides = tiny("visa", root, category="candle")
    metrics = train_job(compose_cfg(overrides), tmp_path / "run")

    assert metrics["dataset"] == "visa" and metrics["category"] == "candle"
    assert metrics["n_train"] + metrics["n_val"] == 4 and metrics["n_test"] == 4, "as 1cls.csv splits them"
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and math.isfinite(metrics["pixel_auroc"])
    assert set(metrics["per_defect"]) >= set(VISA_DEFECT_TYPES), metrics["per_defect"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_test"] == 4
    assert snapshot_tree(root) == before, "the dataset root was modified"


@pytest.mark.slow  # 9-29 s under load; the datamodule test covers the split in the default suite
def test_mvtec_ad2_validates_on_validation_good(tmp_path: Path) -> None:
    root = make_mvtec_ad2_tree(tmp_path / "ad2", ["sheet_metal"], n_train=4, n_val=3)
    before = snapshot_tree(root)
    overrides = tiny("mvtec_ad2", root, category="sheet_metal")
    metrics = train_job(compose_cfg(overrides), tmp_path / "run")

    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (4, 3, 4)
    assert math.isfinite(metrics["pixel_auroc"]) and snapshot_tree(root) == before


@pytest.mark.parametrize("name", ["visa", "mpdd", "mvtec_ad2"])
def test_missing_data_stops_the_job_before_training(tmp_path: Path, name: str) -> None:
    with pytest.raises(MissingDataError, match=str(tmp_path / "absent")):
        train_job(compose_cfg(tiny(name, tmp_path / "absent")), tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.ckpt")), "nothing trained"
