"""Training on the real Fashion-MNIST files (Debian package ``dataset-fashion-mnist``; CI installs it).

Skipped where the four IDX files are absent. The fast test trains one epoch on a subset of batches
(Lightning's ``limit_train_batches``) and scores the full corrupted test set of class 3; the slow one
runs the documented default command, ``dataset=fmnist category=3``, through the CLI and checks the
issue's target for the attention map.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anomaly_attn.data.fmnist import DEBIAN_DIR, IDX_FILES
from anomaly_attn.jobs.train import train_job
from tests.conftest import compose_cfg, run_cli
from tests.fixtures import snapshot_tree

FMNIST_ROOT = Path(os.environ.get("FASHION_MNIST_DIR", DEBIAN_DIR))

pytestmark = pytest.mark.skipif(
    not all((FMNIST_ROOT / name).is_file() for name in IDX_FILES),
    reason=f"real Fashion-MNIST not installed in {FMNIST_ROOT} (sudo apt-get install dataset-fashion-mnist)",
)


def test_dataset_fmnist_defaults_to_the_28px_backbone() -> None:
    cfg = compose_cfg(["dataset=fmnist"])
    assert cfg.model.name == "mnist_ae" and cfg.model.image_size == 28
    assert compose_cfg(["dataset=fmnist", "model=conv_ae", "dataset.image_size=64"]).model.name == "conv_ae"


def test_a_short_training_on_the_real_files_localizes_the_painted_shapes(tmp_path: Path) -> None:
    before = snapshot_tree(FMNIST_ROOT)
    cfg = compose_cfg(
        [
            "dataset=fmnist",
            "category=3",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=30",
            "logger=csv",
            "visualization.max_overlays=0",
        ]
    )
    metrics = train_job(cfg, tmp_path / "run")

    # The real class 3 (dress): 6000 training images (10 % held out), 1000 test images, half corrupted.
    assert metrics["model"] == "mnist_ae"
    assert metrics["n_train"] + metrics["n_val"] == 6000 and metrics["n_val"] == 600
    assert metrics["n_test"] == 1000
    # 30 steps of 64 images already reconstruct dresses well enough that white shapes stand out.
    assert metrics["controls"]["residual_l2"]["pixel_auroc"] > 0.8
    assert metrics["controls"]["image_highpass"]["pixel_auroc"] > 0.8, "white shapes are bright"
    # Quality floor of the map chosen on validation data (gray shapes on held-out dresses), tested on
    # white shapes: measured 0.933 (residual_highpass after 30 steps; the residual 0.983): a broken map,
    # selection or metric falls far below it.
    assert metrics["pixel_auroc"] > 0.85
    # Selection keeps the residual unless a candidate beats it on validation.
    validation = metrics["validation"]
    residual = metrics["controls"]["residual_l2"]["validation"]
    assert sum(validation[k] for k in ("pixel_auroc", "pixel_aupro")) >= sum(
        residual[k] for k in ("pixel_auroc", "pixel_aupro")
    )
    assert snapshot_tree(FMNIST_ROOT) == before, "the installed dataset is never written to"


@pytest.mark.slow
def test_default_command_reaches_the_attention_target_on_class_3(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        ["dataset=fmnist", "category=3", "logger=csv", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=2400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "mnist_ae"
    assert metrics["selection"]["chosen"]["label"] == metrics["selected_map"]
    # Targets: the map chosen on validation data reaches the residual of its own model (the research
    # code's attention reached 0.64-0.66 here, its residual 0.94). Measured: 0.943 vs 0.937 (README).
    assert metrics["pixel_auroc"] >= 0.90
    assert metrics["pixel_auroc"] >= metrics["controls"]["residual_l2"]["pixel_auroc"] - 0.005
    assert metrics["controls"]["residual_l2"]["pixel_auroc"] >= 0.90
