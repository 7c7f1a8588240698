"""hparams_search end to end: the train task returns the validation objective, and an Optuna study on
textures maximises it (a diverging trial fails alone, the study goes on)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from anomaly_attn.cli.hpo import validation_objective
from anomaly_attn.cli.sweeps import CONFIG_DIR
from anomaly_attn.common.objectives import objective_value
from tests.conftest import run_cli, tiny_overrides

TEST_KEYS = ("pixel_auroc", "pixel_aupro", "image_auroc", "image_f1_max", "pixel_f1_max", "pixel_iou")


def test_the_train_task_returns_the_validation_objective_of_metrics_json(tmp_path: Path) -> None:
    from anomaly_attn.cli.train import train

    run_dir = tmp_path / "run"
    overrides = tiny_overrides(category="grass", threads="1")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    job_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    HydraConfig.instance().set_config(cfg)
    try:
        value = train(job_cfg)  # the task function itself, as Hydra's launchers call it
    finally:
        HydraConfig.instance().cfg = None

    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert isinstance(value, float)
    assert on_disk["selection"]["objective"] == "mean_auroc_aupro"
    validation = on_disk["validation"]
    assert value == pytest.approx(0.5 * (validation["pixel_auroc"] + validation["pixel_aupro"]), abs=1e-12)
    # The selected map's validation scores, as the selection recorded them when choosing.
    chosen = on_disk["selection"]["chosen"]["validation"]
    assert value == pytest.approx(objective_value(chosen, "mean_auroc_aupro"), abs=1e-12)
    assert value == validation_objective(on_disk)
    # Not a test metric: the same objective on the test set, and every test metric, differ.
    assert abs(value - 0.5 * (on_disk["pixel_auroc"] + on_disk["pixel_aupro"])) > 1e-6
    assert all(abs(value - on_disk[key]) > 1e-6 for key in TEST_KEYS)


def test_a_search_that_cannot_give_an_objective_stops_before_any_trial(tmp_path: Path) -> None:
    result = run_cli(["-m", "hparams_search=textures_optuna", "validation=none",
                      f"hydra.sweep.dir={tmp_path / 'study'}"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert "error: hparams_search optimises the validation objective" in result.stderr
    assert "validation=none builds no synthetic validation set" in result.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_an_optuna_study_on_textures_maximises_the_validation_objective_and_survives_a_nan_trial(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "study"
    # lr 1e30 makes the loss NaN at the second step. With sampler seed 1 the three random start-up
    # trials take lr 0.001, 1e30, 0.001: the failing trial is in the middle, so the study must go on.
    args = [
        "-m",
        "hparams_search=textures_optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1",
        "optimizer.lr=choice(1e30,0.001)",
        f"hydra.sweep.dir={sweep_dir}",
        *tiny_overrides(threads="1"),
    ]
    result = run_cli(args, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = sorted((path for path in sweep_dir.iterdir() if path.is_dir()), key=lambda p: int(p.name))
    assert [trial.name for trial in trials] == ["0", "1", "2"]
    lrs = [float(OmegaConf.load(t / ".hydra" / "config.yaml").optimizer.lr) for t in trials]
    assert lrs == [0.001, 1e30, 0.001], "the sampler's start-up trials changed: pick another seed"
    failed = trials[1]
    assert not (failed / "metrics.json").exists()
    assert "FloatingPointError: Non-finite training loss" in (failed / "error.txt").read_text()

    completed = {trial: json.loads((trial / "metrics.json").read_text()) for trial in (trials[0], trials[2])}
    objectives = {trial: validation_objective(metrics) for trial, metrics in completed.items()}
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best_trial = max(objectives, key=objectives.get)
    assert results.best_value == pytest.approx(objectives[best_trial], abs=1e-12)
    # The best parameters are those the best trial ran with.
    overrides = OmegaConf.load(best_trial / ".hydra" / "overrides.yaml")
    best_overrides = dict(item.split("=", 1) for item in overrides)
    for key, value in results.best_params.items():
        assert float(best_overrides[key]) == pytest.approx(float(value)), key
    test_objective = 0.5 * (completed[best_trial]["pixel_auroc"] + completed[best_trial]["pixel_aupro"])
    assert abs(results.best_value - test_objective) > 1e-6, "the study optimised the test metric"

    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [job["status"] for job in sorted(summary["jobs"], key=lambda j: int(Path(j["run_dir"]).name))] == [
        "completed",
        "failed",
        "completed",
    ]
