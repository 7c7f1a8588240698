"""Shared test setup: offline W&B, a per-session data cache, helpers to compose configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("ANOMALY_ATTN_PROGRESS", "0")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated datasets go to one folder per test session (textures are generated once)."""
    path = tmp_path_factory.mktemp("data")
    os.environ["ANOMALY_ATTN_DATA_DIR"] = str(path)
    return path


def tiny_overrides(**extra: str) -> list[str]:
    """Overrides for a job that trains in seconds on textures."""
    overrides = {
        "dataset": "textures",
        "dataset.image_size": "64",
        "dataset.crop_size": "32",
        "dataset.n_train": "48",
        "dataset.n_test_good": "4",
        "dataset.n_test_per_defect": "2",
        "dataset.batch_size": "16",
        "trainer.max_epochs": "1",
        "logger": "csv",
        "visualization.max_overlays": "4",
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]
