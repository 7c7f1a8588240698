"""A user adds a Lightning logger with one yaml in their config folder (and their module), nothing in
anomaly_attn edited: the train CLI builds it from the logger group and it receives the job's config, the
training steps and the test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_overrides

USER_CONF = Path(__file__).resolve().parents[1] / "extensions" / "conf"


def test_a_users_logger_yaml_logs_a_cli_training_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_CONFIG_DIR", str(USER_CONF))
    monkeypatch.setenv("ANOMALY_ATTN_TRUSTED_TARGETS", "tests.extensions.")
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(category="brick", logger="with_jsonl", validation="none", threads="1",
                               **{"visualization.max_overlays": "0", "trainer.log_every_n_steps": "1"})
    train = run_cli([*overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    hparams = [record["hparams"] for record in records if "hparams" in record]
    logged = [record["metrics"] for record in records if "metrics" in record]
    # The job's config and provenance first (name: the run name), then Lightning's module hyper-parameters.
    assert records[0]["name"] == "textures-brick-conv_ae-encoder.16-mse-mean_abs_cam-s0"
    assert hparams[0]["provenance"] == metrics["provenance"] and hparams[0]["category"] == "brick"
    assert any("loss_terms" in h for h in hparams[1:])
    assert any("selected_map" in h for h in hparams)
    # Every training step (3 batches of 16 of 48 images, one epoch), then the test metrics once.
    assert sum("train/loss_step" in m for m in logged) == 3
    (test,) = [m for m in logged if "test/pixel_auroc" in m]
    assert test["test/pixel_auroc"] == pytest.approx(metrics["pixel_auroc"])
    # The CSV log of the group's default entry is still there.
    assert (run_dir / "csv" / "metrics.csv").stat().st_size > 0
