"""Shared test setup: offline W&B, a per-session data folder and decoded-image cache, helpers to compose
configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from anomaly_attn.cli.sweeps import CONFIG_DIR

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


@pytest.fixture(scope="session", autouse=True)
def decoded_image_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-image cache of this test session (never the real ~/.cache; set, not defaulted, so a
    developer's own $ANOMALY_ATTN_CACHE_DIR is not written either). Subprocesses inherit it."""
    path = tmp_path_factory.mktemp("decoded_cache")
    os.environ["ANOMALY_ATTN_CACHE_DIR"] = str(path)
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
        # The faithfulness checks on 2 images (seconds saved in every job; tests/integration/test_train.py
        # runs the default).
        "faithfulness.images": "2",
    }
    overrides.update(extra)
    return [f"{k}={v}" for k, v in overrides.items()]


def compose_cfg(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The config a CLI call with these overrides would get (``config`` = train, ``evaluate``, ...)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def user_env(*hidden: str) -> dict[str, str]:
    """This environment as a user's shell has it: no traceback asked for (``HYDRA_FULL_ERROR``, which this
    file sets for in-process jobs, and ``ANOMALY_ATTN_DEBUG``), the checkout importable; ``hidden``
    variables left out too."""
    left_out = {"HYDRA_FULL_ERROR", "ANOMALY_ATTN_DEBUG", *hidden}
    env = {key: value for key, value in os.environ.items() if key not in left_out}
    env["PYTHONPATH"] = str(REPO)
    return env


def run_cli(
    args: list[str], cwd: Path, module: str = "anomaly_attn.train", timeout: int = 900
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in a subprocess, as a user would run it."""
    env = user_env()
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
