"""hparams_search: the value a job returns to the sweeper, and the search configs (no training here)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli import hpo
from anomaly_attn.cli.hpo import (
    RESULTS_FILE,
    check_search_command,
    check_search_config,
    job_return,
    search_finished,
    validation_objective,
)
from anomaly_attn.cli.jobs import SWEEP_STAMP
from anomaly_attn.cli.sweeps import CONFIG_DIR

SEARCHES = sorted(path.stem for path in (Path(CONFIG_DIR) / "hparams_search").glob("*.yaml"))


def metrics(objective: str = "mean_auroc_aupro") -> dict:
    """A metrics.json whose validation and test numbers all differ."""
    return {
        "pixel_auroc": 0.95,
        "pixel_aupro": 0.85,
        "image_auroc": 0.99,
        "validation": {"pixel_auroc": 0.8, "pixel_aupro": 0.6, "image_auroc": 0.7},
        "selection": {"objective": objective, "chosen": {"label": "residual_l2"}},
    }


def test_the_objective_is_the_selection_objective_of_the_validation_block_not_a_test_metric() -> None:
    assert validation_objective(metrics()) == pytest.approx(0.7)  # (0.8 + 0.6) / 2, test would be 0.9
    # The selection block's own objective wins over the argument.
    assert validation_objective(metrics("pixel_aupro"), "pixel_auroc") == pytest.approx(0.6)
    # A fixed map (selection.map=fixed) has no selection block: the configured objective.
    fixed = {key: value for key, value in metrics().items() if key != "selection"}
    assert validation_objective(fixed, "pixel_auroc") == pytest.approx(0.8)
    assert job_return(metrics()) == pytest.approx(0.7)


def test_a_job_without_an_objective_returns_a_failure_marker_never_nan() -> None:
    no_validation = {"pixel_auroc": 0.9, "pixel_aupro": 0.8}
    with pytest.raises(ValueError, match="validation=none"):
        validation_objective(no_validation)
    marker = job_return(no_validation)
    assert marker["status"] == "failed" and "validation=none" in marker["error"]

    failed = {"status": "failed", "error": "FloatingPointError: Non-finite training loss", "run_dir": "x"}
    assert job_return(failed) == failed

    nan = metrics()
    nan["validation"]["pixel_aupro"] = float("nan")
    marker = job_return(nan)
    assert isinstance(marker, dict) and "nan" in marker["error"]
    # The Optuna sweeper casts the return value to float: a marker must not cast (a NaN would, and
    # Optuna would then refuse to record the trial, stopping the study).
    with pytest.raises((TypeError, ValueError)):
        float(marker)
    assert not any(isinstance(value, float) and math.isnan(value) for value in marker.values())


def search_cfg(name: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"hparams_search={name}", *overrides], return_hydra_config=True)


def test_there_is_a_generic_and_a_textures_search() -> None:
    assert {"optuna", "textures_optuna"} <= set(SEARCHES)


@pytest.mark.parametrize("name", SEARCHES)
def test_each_search_maximises_with_optuna_over_keys_that_exist(name: str) -> None:
    cfg = search_cfg(name)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize"
    assert sweeper.max_failure_rate == 1.0, "a failed trial must not stop the study"
    assert cfg.validation.generators, "the objective needs the synthetic validation set"
    assert cfg.selection.objective == "mean_auroc_aupro"
    # Numbered trial folders, never skipped: a folder never lends its metrics.json to another trial.
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert cfg.skip_completed is False and sweep["subdir"] == "${hydra.job.num}"
    assert sweep["dir"] == "${paths.output_dir}/${experiment_name}/${now:%Y-%m-%d_%H-%M-%S}"
    names = {"optuna": "hpo", "textures_optuna": "hpo_textures"}
    assert cfg.experiment_name == names.get(name, cfg.experiment_name)
    assert sweeper.params and "optimizer.lr" in sweeper.params
    check_search_config(cfg)  # every searched key exists in this config
    job = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    assert OmegaConf.to_container(job, resolve=True)["experiment_name"].startswith("hpo")

    optuna_impl = pytest.importorskip("hydra_plugins.hydra_optuna_sweeper._impl")
    parameters = [f"{key}={value}" for key, value in sweeper.params.items()]
    distributions, fixed = optuna_impl.create_params_from_overrides(parameters)
    assert set(distributions) == set(sweeper.params) and not fixed, "every entry is a search range"
    lr = distributions["optimizer.lr"]
    assert type(lr).__name__ == "LogUniformDistribution" and lr.low == 1e-4 and lr.high == 1e-2


def test_the_textures_search_covers_learning_rate_bottleneck_loss_and_attention_weights() -> None:
    cfg = search_cfg("textures_optuna")
    assert set(cfg.hydra.sweeper.params) == {
        "optimizer.lr",
        "model.bottleneck_dim",
        "loss.terms.ssim",
        "map.weight",
    }
    assert cfg.model.name == "conv_ae" and cfg.dataset.name == "textures" and cfg.loss.name == "mse_ssim"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["validation=none"], "validation=none builds no synthetic validation set"),
        (["model=unet"], "searches model.bottleneck_dim, which this config does not have"),
        (["hydra.sweeper.direction=minimize"], "use hydra.sweeper.direction=maximize"),
    ],
)
def test_a_search_that_cannot_work_is_refused_before_any_trial(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_search_config(search_cfg("textures_optuna", *overrides))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "hparams_search=textures_optuna", "validation=none"], "validation=none"),
        (["-m", "hparams_search=optuna", "optimizer.lrr=choice(0.1,0.01)"], "has: lr, weight_decay"),
    ],
)
def test_the_command_line_of_a_search_is_checked_before_hydra_starts(args: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_search_command(args)
    check_search_command(["-m", "hparams_search=optuna", "optimizer.lr=choice(0.1,0.01)", "seed=1"])
    check_search_command(["-m", "hparams_search=optuna", "+optimizer.momentum=choice(0.9,0.99)"])  # added
    check_search_command(["-m", "validation=none"])  # not a search: nothing to check


def test_a_search_without_the_optuna_plugin_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = hpo.importlib.util.find_spec
    monkeypatch.setattr(
        hpo.importlib.util,
        "find_spec",
        lambda name, *rest: None if name.startswith("hydra_plugins.hydra_optuna") else find_spec(name, *rest),
    )
    with pytest.raises(ValueError, match=r"pip install -e '\.\[search\]'"):
        check_search_command(["-m", "hparams_search=textures_optuna"])


def test_a_search_counts_as_finished_only_with_results_written_after_it_started(tmp_path: Path) -> None:
    assert not search_finished(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("best_value: 0.5\n")
    os.utime(tmp_path / RESULTS_FILE, ns=(0, 0))  # a study of an earlier command
    (tmp_path / SWEEP_STAMP).write_text("now\n")
    assert not search_finished(tmp_path)
    (tmp_path / RESULTS_FILE).write_text("best_value: 0.6\n")
    assert search_finished(tmp_path)
