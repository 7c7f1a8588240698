"""W&B never fails a job: a wandb.init that raises or a W&B directory that cannot be written costs one
warning and the job finishes with the CSV log; a W&B service that is gone when the run closes, too."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import wandb
from lightning.pytorch.loggers import CSVLogger

from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.loggers import close_wandb
from anomaly_attn.training.trainer import build_loggers
from tests.conftest import compose_cfg, tiny_overrides


def wandb_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    return [message for message in messages if "W&B" in message]


def test_failing_wandb_init_leaves_the_csv_logger_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args, **kwargs):
        raise wandb.errors.CommError("could not reach the W&B service")

    monkeypatch.setattr(wandb, "init", refuse)
    for csv in ("true", "false"):  # logger=wandb with and without its CSV log
        caplog.clear()
        cfg = compose_cfg(tiny_overrides(category="brick", logger="wandb", **{"logger.csv": csv}))
        loggers = build_loggers(cfg, tmp_path, "brick", "encoder.16")
        assert [type(logger) for logger in loggers] == [CSVLogger]
        (warning,) = wandb_warnings(caplog)
        assert "CommError: could not reach the W&B service" in warning and "CSV only" in warning


def test_unwritable_wandb_dir_still_finishes_the_job_with_csv_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Tests run as root, for whom permissions do not stop a write: a path under a regular file does.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("WANDB_DIR", str(blocker / "wandb_runs"))
    run_dir = tmp_path / "run"
    cfg = compose_cfg(tiny_overrides(category="brick", logger="wandb", validation="none"))

    metrics = train_job(cfg, run_dir)

    assert json.loads((run_dir / "metrics.json").read_text())["category"] == "brick"
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert (run_dir / "csv" / "metrics.csv").stat().st_size > 0
    (warning,) = wandb_warnings(caplog)
    assert str(blocker / "wandb_runs" / "wandb") in warning and "CSV only" in warning
    assert wandb.run is None


def test_closing_a_run_whose_service_is_gone_warns_instead_of_raising(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def connection_lost(*args, **kwargs):
        raise ConnectionResetError("Connection lost")

    monkeypatch.setattr(wandb, "run", object())
    monkeypatch.setattr(wandb, "finish", connection_lost)
    close_wandb()
    (warning,) = wandb_warnings(caplog)
    assert "ConnectionResetError: Connection lost" in warning
