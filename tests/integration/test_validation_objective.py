"""selection.monitor=val_objective: the checkpoint is chosen by the synthetic-validation objective of
residual_l2, scored after every epoch (training/callbacks/validation_objective.py), not by val_loss."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.callbacks import validation_objective
from tests.conftest import compose_cfg, tiny_overrides


def _logged(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def test_the_kept_checkpoint_is_the_best_epoch_by_the_objective(tmp_path: Path, monkeypatch) -> None:
    # A planted objective that falls every epoch while val_loss falls too: the best epoch by the objective
    # is the first, by val_loss the last, so a job that ignored the option would keep another checkpoint.
    real = validation_objective.objective_value
    planted: list[float] = []

    def falling(metrics, objective):
        assert 0.0 <= real(metrics, objective) <= 1.0  # the real objective was computed
        planted.append(1.0 - 0.1 * len(planted))
        return planted[-1]

    monkeypatch.setattr(validation_objective, "objective_value", falling)
    cfg = compose_cfg(tiny_overrides(category="brick", **{"selection.monitor": "val_objective",
                                                          "trainer.max_epochs": "3"}))
    metrics = train_job(cfg, tmp_path)
    assert _logged(tmp_path, "val_objective") == pytest.approx([1.0, 0.9, 0.8])
    losses = _logged(tmp_path, "val_loss")
    assert losses.index(min(losses)) != 0  # else this test could not tell the two monitors apart
    assert metrics["best_epoch"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] == 0


def test_val_objective_needs_a_validation_set_and_flips_the_modes(tmp_path: Path) -> None:
    cfg = compose_cfg(["selection.monitor=val_objective", "callbacks=early_stopping"])
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=True)
    assert callbacks["model_checkpoint"]["mode"] == "max" and callbacks["early_stopping"]["mode"] == "max"
    default = OmegaConf.to_container(compose_cfg([]).callbacks, resolve=True)
    assert default["model_checkpoint"]["mode"] == "min"
    cfg = compose_cfg(tiny_overrides(category="brick", validation="none",
                                     **{"selection.monitor": "val_objective", "selection.map": "fixed"}))
    with pytest.raises(ValueError, match="validation=none builds none"):
        train_job(cfg, tmp_path)
