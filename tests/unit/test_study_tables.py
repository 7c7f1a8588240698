"""The study scripts' tables (experiments/attention_study.py, attention_training.py) from run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import attention_study  # noqa: E402
import attention_training  # noqa: E402


def _candidate(label: str, family: str, validation: float, test: float) -> dict:
    return {
        "label": label,
        "family": family,
        "validation": {"pixel_auroc": validation, "pixel_aupro": validation - 0.1},
        "posthoc_test": {"pixel_auroc": test, "pixel_aupro": test - 0.1},
    }


def _write_run(folder: Path, category: str, corruption: str, chosen: float, residual: float, **cfg) -> None:
    folder.mkdir(parents=True)
    candidates = [
        _candidate("seed@encoder.3[residual]", "attention", 0.80, 0.70),
        _candidate("seed@encoder.3[residual]×residual_l2", "attention+residual", 0.95, chosen),
        _candidate("residual_l2", "residual_l2", 0.90, residual),
    ]
    metrics = {
        "dataset": "fmnist",
        "category": category,
        "pixel_auroc": chosen,
        "pixel_aupro": chosen - 0.1,
        "image_auroc": 0.9,
        "validation": {"pixel_auroc": 0.95, "pixel_aupro": 0.85},
        "controls": {
            "residual_l2": {"pixel_auroc": residual, "pixel_aupro": residual - 0.1, "image_auroc": 0.8},
            "image_highpass": {"pixel_auroc": 0.6, "pixel_aupro": 0.3},
        },
        "selection": {
            "objective": "mean_auroc_aupro",
            "chosen": {"label": candidates[1]["label"], "validation": candidates[1]["validation"]},
            "candidates": candidates,
            "posthoc_spearman": 0.9,
        },
    }
    attention = cfg.get("map", {"weight": 0.0, "loss": "mean"})
    config = {"dataset": {"name": "fmnist", "corruption": corruption}, "map": attention,
              "seed": cfg.get("seed", 0)}
    metrics["seed"] = cfg.get("seed", 0)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML


def test_study_table_shows_each_family_validation_to_test_and_counts_wins(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", "0", "gray", chosen=0.93, residual=0.91)
    _write_run(tmp_path / "b", "1", "gray", chosen=0.90, residual=0.92)
    assert attention_study.main([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "attention_study.md").read_text()
    assert (
        "| fmnist/gray | 0 | seed@encoder.3[residual]×residual_l2 | 0.950 → 0.930 | 0.800 → 0.700 |" in text
    )
    assert (
        "fmnist/gray: selected 0.915 vs residual 0.915 (mean test pixel_auroc); selected ≥ residual on 1 of 2"
        in text
    )


def test_training_table_reports_the_validation_change_per_loss(tmp_path: Path) -> None:
    _write_run(tmp_path / "off", "0", "gray", 0.93, 0.91)
    _write_run(tmp_path / "on", "0", "gray", 0.93, 0.91, map={"weight": 0.01, "loss": "expansion"})
    metrics = json.loads((tmp_path / "on" / "metrics.json").read_text())
    metrics["selection"]["chosen"]["validation"] = {"pixel_auroc": 0.97, "pixel_aupro": 0.87}
    (tmp_path / "on" / "metrics.json").write_text(json.dumps(metrics))
    assert attention_training.main([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "attention_training.md").read_text()
    assert "| fmnist | 0 | 0.900 (0.930) | – | – | +0.020 (0.930) |" in text
    assert "expansion: mean Δ validation objective +0.0200; better (> +0.001) on 1 of 1 categories" in text


def test_with_seeds_each_run_is_a_row_and_each_loss_run_is_paired_with_its_own_seed(tmp_path: Path) -> None:
    for seed, chosen in ((0, 0.93), (1, 0.80)):
        _write_run(tmp_path / f"off{seed}", "0", "gray", chosen, 0.91, seed=seed)
        _write_run(tmp_path / f"on{seed}", "0", "gray", chosen, 0.91, seed=seed,
                   map={"weight": 0.01, "loss": "mean"})
        for name in (f"off{seed}", f"on{seed}"):
            metrics = json.loads((tmp_path / name / "metrics.json").read_text())
            metrics["seed"] = seed
            shift = 0.01 if name.startswith("on") else 0.0
            metrics["selection"]["chosen"]["validation"] = {"pixel_auroc": 0.9 - seed / 10 + shift,
                                                            "pixel_aupro": 0.8 - seed / 10 + shift}
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    assert attention_training.main([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "attention_training.md").read_text()
    # Paired within a seed: +0.010 for both, not the seed-to-seed difference of 0.1.
    assert "| fmnist | 0 | 0.850 (0.930) | +0.010 (0.930) |" in text
    assert "| fmnist | 0 (seed 1) | 0.750 (0.800) | +0.010 (0.800) |" in text
    assert "mean: mean Δ validation objective +0.0100; better (> +0.001) on 2 of 2 categories × seeds" in text
    assert attention_study.main([str(tmp_path)]) == 0
    study = (tmp_path / "report" / "attention_study.md").read_text()
    assert "| fmnist/gray | 0 (seed 0) |" in study and "| fmnist/gray | 0 (seed 1) |" in study


def test_paper_presets_sweep_three_seeds_unless_told_otherwise() -> None:
    import paper

    assert paper.preset_seeds("attention_study") == ["seed=0,1,2"]
    assert paper.preset_seeds("mvtec_layers") == ["seed=0,1,2"]
    assert paper.preset_seeds("mvtec_layers", "0") == ["seed=0"]
    assert paper.preset_seeds("btad_main_smoke") == []  # smoke variants: the config's one seed
    with pytest.raises(SystemExit, match="seeds must be integers"):
        paper.preset_seeds("attention_study", "0,one")


def test_without_selection_blocks_the_scripts_say_what_to_run(tmp_path: Path, capsys) -> None:
    assert attention_study.main([str(tmp_path)]) == 2
    assert "make paper-attention_study" in capsys.readouterr().err


@pytest.fixture(autouse=True, scope="module")
def _restore_path():
    yield
    sys.path.remove(str(REPO / "experiments"))
