"""ELPV from the installed ``elpv-dataset`` package (the dev extra installs it): the real split counts and a
short job on the real cells.

Skipped where the package is absent (``pip install 'anomaly_attn[elpv]'``). The counts are the published
ones of this split (normal = probability 0, a seeded 75 % of them for training; anomalous = probability 1):
mono 441 training / 147 normal + 313 defective test cells, poly 690 / 230 + 402.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from anomaly_attn.data.elpv import ELPV, package_data_dir
from anomaly_attn.data.layout import read_layout
from tests.conftest import compose_cfg
from tests.fixtures import pixel_keys, snapshot_tree

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("elpv_dataset") is None or package_data_dir() is None,
    reason="the elpv-dataset package is not installed (pip install 'anomaly_attn[elpv]'; the dev extra "
    "has it)",
)

COUNTS = {"mono": (441, 147, 313, 117, 56), "poly": (690, 230, 402, 178, 50)}
"""Per category: training cells, normal and defective test cells, then the 1/3 and 2/3 cells."""


@pytest.mark.parametrize("category", ["mono", "poly"])
def test_the_real_split_counts(category: str) -> None:
    train, good, defective, third, two_thirds = COUNTS[category]
    records = read_layout(ELPV().prepare(category))
    assert len(records.train) == train
    assert sum(r.label == 0 for r in records.test) == good and sum(r.label for r in records.test) == defective
    with_uncertain = read_layout(ELPV(uncertain="test").prepare(category))
    assert [r.path for r in with_uncertain.train] == [r.path for r in records.train]
    types = [r.defect_type for r in with_uncertain.test]
    assert (types.count("uncertain_p033"), types.count("uncertain_p067")) == (third, two_thirds)
    assert len(with_uncertain.test) == good + defective + third + two_thirds


def test_a_short_job_on_the_real_cells(tmp_path: Path) -> None:
    from anomaly_attn.jobs.train import train_job

    data = package_data_dir()
    before = snapshot_tree(data)
    cfg = compose_cfg([
        "dataset=elpv", "category=mono", "dataset.image_size=64", "dataset.num_workers=0",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=4", "validation.max_images=24",
        "logger=csv", "visualization.max_overlays=0", "faithfulness.images=2", "faithfulness.cascade=[1.0]",
    ])
    metrics = train_job(cfg, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 441 and metrics["n_test"] == 147 + 313
    assert pixel_keys(stored) == [], "a test set without masks has no pixel metric"
    reported = {key: stored[key] for key in ("image_auroc", "image_f1_max", "per_defect", "intervals")}
    reported["controls"] = {name: {k: v for k, v in control.items() if k != "validation"}
                            for name, control in stored["controls"].items()}
    assert "NaN" not in json.dumps(reported), reported
    for name in ("selected", "residual_l2"):
        interval = stored["intervals"]["maps"][name]["image_auroc"]
        assert all(math.isfinite(interval[end]) for end in ("low", "high"))
    assert 0.0 <= stored["image_auroc"] <= 1.0
    with open(tmp_path / "run" / "per_image_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 460 and {row["defect_probability"] for row in rows} == {"0.0", "1.0"}
    assert snapshot_tree(data) == before, "the installed dataset is never written to"
