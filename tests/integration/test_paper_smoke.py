"""Paper presets: every sweep names valid values; `experiments/paper.py` runs a sweep and its report."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from anomaly_attn.cli.sweeps import CONFIG_DIR
from anomaly_attn.data.build import build_dataset
from anomaly_attn.models.registry import build_backbone
from tests.conftest import REPO, run_cli, tiny_overrides

PAPER = [
    "mvtec_layers",
    "mvtec_losses",
    "mvtec_backbones",
    "btad_main",
    "fmnist_main",
    "attention_vs_residual",
]
GROUPS = ("dataset", "model", "loss", "map")


def compose_preset(name: str, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            config_name="config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True
        )


def sweep_values(cfg) -> dict[str, list[str]]:
    parser = OverridesParser.create()
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    values = {}
    for key, value in params.items():
        override = parser.parse_override(f"{key}={value}")
        swept = override.sweep_iterator() if override.is_sweep_override() else [override.value()]
        values[key] = [str(v) for v in swept]
    return values


@pytest.mark.parametrize("name", PAPER + [f"{n}_smoke" for n in PAPER])
def test_paper_preset_sweeps_valid_values_into_a_fixed_directory(name: str) -> None:
    cfg = compose_preset(name)
    assert cfg.experiment_name == name
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["dir"].endswith(f"{name}/multirun")
    assert set(cfg.report) == {"rows", "cols", "metric"}
    values = sweep_values(cfg)
    # A swept `map` group is metrics.json's `variant` (the selected map's variant or control name).
    column_axis = "map" if cfg.report.cols == "variant" else cfg.report.cols
    assert column_axis in values, "the table's columns are a swept axis"
    if "category" in values:
        fixed = [f"{k}={v[0]}" for k, v in values.items() if k in GROUPS]
        dataset = build_dataset(compose_preset(name, fixed) if fixed else cfg)
        assert [dataset.check_category(c) for c in values["category"]] == values["category"]
    for group in set(values) & set(GROUPS):
        for option in values[group]:
            assert (CONFIG_DIR / group / f"{option}.yaml").exists(), f"{group}={option}"
    for layer in values.get("layer", []):
        assert layer in build_backbone(cfg).layer_names()
    jobs = 1
    for axis in values.values():
        jobs *= len(axis)
    assert jobs == 2 if name.endswith("_smoke") else jobs >= 9


def run_paper(name: str, sweep_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "paper.py"), name, "--", f"hydra.sweep.dir={sweep_dir}"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def check_report_matches_runs(sweep_dir: Path, rows: str, cols: str, metric: str) -> None:
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    with (sweep_dir / "report" / "table.csv").open() as handle:
        table = list(csv.reader(handle))
    header = table[0]
    cells = {
        (row[0], col): value for row in table[1:] for col, value in zip(header[1:], row[1:], strict=True)
    }
    assert len(cells) == len(runs)
    for run in runs:
        assert cells[(str(run[rows]), str(run[cols]))] == f"{run[metric]:.3f}"
    assert (sweep_dir / "report" / "roc.png").stat().st_size > 5000


def _check_preset_end_to_end(name: str, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = run_paper(name, sweep_dir, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 2
    spec = OmegaConf.load(CONFIG_DIR / "experiment" / f"{name}.yaml").report
    check_report_matches_runs(sweep_dir, spec.rows, spec.cols, spec.metric)


def test_paper_smoke_preset_runs_its_sweep_and_report(tmp_path: Path) -> None:
    _check_preset_end_to_end("mvtec_layers_smoke", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"{n}_smoke" for n in PAPER if n != "mvtec_layers"])
def test_every_paper_smoke_preset_runs(name: str, tmp_path: Path) -> None:
    _check_preset_end_to_end(name, tmp_path)


@pytest.mark.slow
def test_rerunning_a_paper_table_skips_finished_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    assert run_paper("btad_main_smoke", sweep_dir, tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")}
    assert run_paper("btad_main_smoke", sweep_dir, tmp_path).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/metrics.json")} == before


@pytest.mark.slow
def test_two_by_two_texture_sweep_report_equals_metrics(tmp_path: Path) -> None:

    sweep_dir = tmp_path / "sweep"
    train = ["-m", "category=brick,grass", "layer=encoder.2,encoder.14", *tiny_overrides(),
             f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli(train, cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = [str(sweep_dir), "--rows", "category", "--cols", "layer"]
    result = run_cli(report, cwd=tmp_path, module="anomaly_attn.report", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    check_report_matches_runs(sweep_dir, "category", "layer", "pixel_auroc")
    assert (sweep_dir / "report" / "table.tex").exists() and (
        sweep_dir / "report" / "per_defect.png"
    ).exists()
    assert len(list((sweep_dir / "report").glob("qualitative_*.png"))) == 2


@pytest.mark.slow
def test_a_paper_table_over_two_seeds_aggregates_them(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "paper.py"), "btad_main_smoke", "--seeds", "0,1", "--",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    assert sorted((r["variant"], r["seed"]) for r in runs) == [
        ("mean_abs_cam", 0), ("mean_abs_cam", 1), ("residual_l2", 0), ("residual_l2", 1)
    ]
    with (sweep_dir / "report" / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:  # category brick, one column per variant: the mean over the two seeds' runs
        values = [r["pixel_auroc"] for r in runs if r["variant"] == row["variant"]]
        assert (row["n"], row["seeds"]) == ("2", "0;1")
        assert row["mean"] == f"{sum(values) / 2:.3f}"
    assert "(n=2)" in (sweep_dir / "report" / "table.md").read_text()
