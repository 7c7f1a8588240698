"""The study scripts' tables (experiments/attention_study.py, attention_training.py, image_score_rules.py)
from run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))
import attention_study  # noqa: E402
import attention_training  # noqa: E402
import image_score_rules  # noqa: E402


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


def test_with_seeds_each_loss_run_is_paired_with_its_own_seed(tmp_path: Path) -> None:
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
    # Runs of one category that differ in more than the seed are still one row each; here the off and
    # on runs of a seed share it, so the row holds 4 runs: the means of their numbers.
    assert "| fmnist/gray | 0 (seeds 0,0,1,1) | seed@encoder.3[residual]×residual_l2 (4/4) |" in study
    assert "0.950 → 0.865 ± 0.075 |" in study
    # ...and the paired comparison refuses to pool them, naming the key and the --where that splits them.
    assert "no paired comparison" in study and "--where map.weight=0.0" in study


def test_three_seeds_are_one_row_with_the_paired_comparison_and_faithfulness(tmp_path: Path) -> None:
    from tests.unit.test_compare import synthetic_inputs, unit_metrics

    for category in ("0", "1"):
        for seed in (0, 1, 2):
            folder = tmp_path / f"{category}_{seed}"
            _write_run(folder, category, "gray", chosen=0.9, residual=0.8, seed=seed)
            inputs = synthetic_inputs(category, seed, strength=2.0)
            inputs.save_parts(folder / "interval_parts.npz")
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics.update(unit_metrics(inputs, "selected"))
            metrics["controls"]["residual_l2"].update(unit_metrics(inputs, "residual_l2"))
            metrics["intervals"] = {"resamples": 200, "seed": 3, "level": 0.95, "map_side": 256}
            if seed == 2:  # another choice in one seed: counted, not hidden
                metrics["selection"]["chosen"]["label"] = "residual_l2 σ2"
            metrics["faithfulness"] = {"maps": {"selected": {
                "label": "selected", "deletion_auc": 0.3 + seed / 100,
                "deletion_vs_random": {"mean": -0.5, "low": -0.6, "high": -0.4},
            }}, "random": {"deletion_auc": 0.9}}
            (folder / "metrics.json").write_text(json.dumps(metrics))
    assert attention_study.main([str(tmp_path)]) == 0
    study = (tmp_path / "report" / "attention_study.md").read_text()
    selected = unit_metrics(synthetic_inputs("0", 0, strength=2.0), "selected")["pixel_auroc"]
    choices = "seed@encoder.3[residual]×residual_l2 (2/3); residual_l2 σ2 (1/3)"
    assert f"| fmnist/gray | 0 (seeds 0,1,2) | {choices} |" in study
    rows = [line for line in study.splitlines() if line.startswith("| fmnist/gray | 0 | 3 |")]
    assert len(rows) == 1 and rows[0].count(" *") == 3  # every interval excludes 0
    assert abs(float(rows[0].split(" | ")[3]) - selected) < 0.05
    assert ("fmnist/gray, pixel_auroc: selected − residual_l2 ≥ 0 on 2 of 2 categories; interval above 0 "
            "on 2") in study
    assert "n/a: fewer than 6 categories" in study
    assert "#### fmnist/gray (6 runs)" in study
    assert "| selected | 6 | 0.310 ± 0.009 | -0.500 (excl. 0: 6/6) |" in study


def test_paper_presets_sweep_three_seeds_unless_told_otherwise() -> None:
    import paper

    assert paper.preset_seeds("attention_study") == ["seed=0,1,2"]
    assert paper.preset_seeds("mvtec_layers") == ["seed=0,1,2"]
    assert paper.preset_seeds("mvtec_layers", "0") == ["seed=0"]
    assert paper.preset_seeds("btad_main_smoke") == []  # smoke variants: the config's one seed
    with pytest.raises(SystemExit, match="seeds must be integers"):
        paper.preset_seeds("attention_study", "0,one")


def _write_rules_run(folder: Path, dataset: str, same: float, split_half: float) -> None:
    folder.mkdir(parents=True)
    rules = {rule: {"gain_mean": gain, "gain_min": gain, "folds": {}}
             for rule, gain in (("same", same), ("split_half", split_half), ("per_generator", same))}
    metrics = {"dataset": dataset, "image_auroc": 0.8,
               "selection": {"image_score_transfer": {"prior": "max of residual_l2", "rules": rules}}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(json.dumps({"dataset": {"name": dataset}}))


def test_image_score_rules_table_per_dataset_and_over_all_runs(tmp_path: Path) -> None:
    import paper

    for index in range(5):
        _write_rules_run(tmp_path / f"elpv{index}", "elpv", -0.02 - 0.01 * index, 0.0)
        _write_rules_run(tmp_path / f"fmnist{index}", "fmnist", 0.07 + 0.01 * index, 0.05 + 0.01 * index)
    assert image_score_rules.main([str(tmp_path)]) == 0
    text = (tmp_path / "report" / "image_score_rules.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | n |" not in line]
    assert [row.split(" | ")[:3] for row in rows] == [
        [f"| {group}", rule, str(n)] for group, n in (("elpv", 5), ("fmnist", 5), ("all", 10))
        for rule in ("same", "split_half", "per_generator")
    ]
    # split_half - same: +0.02 to +0.06 on the ELPV runs, -0.02 on every Fashion-MNIST one (both intervals
    # exclude 0); over all runs the interval holds 0
    assert rows[1].endswith("]* |") and "| +0.0400 [" in rows[1] and rows[4].endswith("[-0.0200, -0.0200]* |")
    assert not rows[7].endswith("* |")
    assert paper.preset_seeds("image_score_rules") == ["seed=0,1"]
    assert [sweep[0] for sweep in paper.preset_sweeps("image_score_rules")] == [
        "dataset=fmnist", "dataset=textures", "dataset=elpv"
    ]


def test_without_selection_blocks_the_scripts_say_what_to_run(tmp_path: Path, capsys) -> None:
    assert attention_study.main([str(tmp_path)]) == 2
    assert "make paper-attention_study" in capsys.readouterr().err


@pytest.fixture(autouse=True, scope="module")
def _restore_path():
    yield
    sys.path.remove(str(REPO / "experiments"))
