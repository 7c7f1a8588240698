"""Seeds as a dimension of the report: runs of one table cell that differ only in ``seed`` are shown as
mean ± sample std (n) over seeds; runs that differ in anything else are refused, naming the key."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from anomaly_attn.cli.report import main
from anomaly_attn.reporting.sweep_report import build_report
from tests.unit.test_report import write_run

CATEGORIES = ("brick", "grass")
SEEDS = (0, 1, 2)


def write_seed_run(root: Path, category: str, seed: int, rng: np.random.Generator, **config) -> dict:
    """A complete run of ``category`` and ``seed``; its config.yaml names its own folder in several output
    locations (which must not count as a difference) and takes ``config`` overrides."""
    run_dir = root / f"category={category},seed={seed}"
    metrics = write_run(run_dir, category, "encoder.14", rng)
    metrics["seed"] = seed
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    resolved = {
        "category": category,
        "layer": "encoder.14",
        "seed": seed,
        "model": {"name": "conv_ae", "bottleneck_dim": 64},
        "loss": {"name": "mse"},
        "dataset": {"name": "textures", "seed": 0, "root": f"/data/{seed}"},
        "paths": {"output_dir": str(run_dir)},
        "hydra": {"run": {"dir": str(run_dir)}},
        "callbacks": {"model_checkpoint": {"dirpath": str(run_dir / "checkpoints")}},
    }
    for key, value in config.items():  # dotted overrides: loss__name="ssim" → loss.name
        *parents, leaf = key.split("__")
        node = resolved
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved))
    return metrics


@pytest.fixture
def seed_sweep(tmp_path: Path) -> tuple[Path, dict[tuple[str, int], float]]:
    """3 seeds × 2 categories, plus a failed job of seed 3 (listed, never averaged in)."""
    rng = np.random.default_rng(7)
    values = {}
    for category in CATEGORIES:
        for seed in SEEDS:
            values[(category, seed)] = write_seed_run(tmp_path, category, seed, rng)["pixel_auroc"]
    failed = tmp_path / "category=brick,seed=3"
    failed.mkdir()
    (failed / "config.yaml").write_text("category: brick\nseed: 3\n")
    (failed / "error.txt").write_text("RuntimeError: out of memory\n")
    return tmp_path, values


def expected_cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


def test_three_seeds_of_two_categories_aggregate_to_mean_std_and_n(seed_sweep) -> None:
    root, values = seed_sweep
    out_dir = build_report(root, rows="category", cols="model", metric="pixel_auroc", figures=False)
    markdown = (out_dir / "table.md").read_text()
    per_category = {c: [values[(c, s)] for s in SEEDS] for c in CATEGORIES}
    for category, seeds in per_category.items():
        assert f"| {category} | {expected_cell(seeds)} |" in markdown, markdown
    mean_of_means = statistics.fmean(statistics.fmean(v) for v in per_category.values())
    assert f"| **mean** | {mean_of_means:.3f} |" in markdown
    assert "mean ± sample std over seeds 0–2 (n=3)" in markdown
    with (out_dir / "table.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["category"], r["model"]) for r in rows] == [(c, "conv_ae") for c in CATEGORIES]
    for row in rows:
        seeds = per_category[row["category"]]
        assert row["mean"] == f"{statistics.fmean(seeds):.3f}"
        assert row["std"] == f"{statistics.stdev(seeds):.3f}"
        assert (row["n"], row["seeds"]) == ("3", "0;1;2")
        assert [float(v) for v in row["values"].split(";")] == seeds, "each seed's value, full precision"
    latex = (out_dir / "table.tex").read_text()
    brick = per_category["brick"]
    assert f"{statistics.fmean(brick):.3f} $\\pm$ {statistics.stdev(brick):.3f} ($n$=3)" in latex
    assert "seeds 0--2" in latex
    summary = (out_dir / "summary.md").read_text()
    assert "out of memory" in summary, "the failed seed is listed, not averaged in"


def test_a_cell_missing_a_seed_shows_its_own_n(seed_sweep) -> None:
    root, values = seed_sweep
    for name in ("metrics.json", "per_image_scores.csv"):
        (root / "category=grass,seed=2" / name).unlink()  # grass seed 2 never finished
    out_dir = build_report(root, rows="category", cols="model", figures=False)
    markdown = (out_dir / "table.md").read_text()
    assert f"| grass | {expected_cell([values[('grass', 0)], values[('grass', 1)]])} |" in markdown
    assert f"| brick | {expected_cell([values[('brick', s)] for s in SEEDS])} |" in markdown
    assert "over seeds 0–2 (n=2–3, each cell shows its n)" in markdown


@pytest.mark.parametrize(
    ("override", "named"),
    [({"loss__name": "ssim"}, "loss.name: mse vs ssim"), ({"dataset__seed": 1}, "dataset.seed: 0 vs 1")],
)
def test_runs_of_one_cell_that_differ_in_another_key_are_refused_naming_it(
    tmp_path: Path, capsys, override: dict, named: str
) -> None:
    rng = np.random.default_rng(1)
    for seed in SEEDS:
        write_seed_run(tmp_path, "brick", seed, rng, **(override if seed == 2 else {}))
    assert main([str(tmp_path), "--rows", "category", "--cols", "model", "--no-figures"]) == 2
    error = capsys.readouterr().err
    assert f"Two runs in cell (brick, conv_ae) differ in {named}; add it to --rows/--cols" in error
    assert "in seed:" not in error and ", seed:" not in error, "the top-level seed itself is no difference"
    # Without the odd run the same cell aggregates (paths, hydra and checkpoint folders differ too).
    for path in tmp_path.glob("category=brick,seed=2"):
        (path / "metrics.json").unlink()
        (path / "error.txt").write_text("killed\n")
    assert main([str(tmp_path), "--rows", "category", "--cols", "model", "--no-figures"]) == 1
    assert "± " in (tmp_path / "report" / "table.md").read_text()


def test_cols_seed_keeps_one_column_per_seed(seed_sweep) -> None:
    root, values = seed_sweep
    aggregated = build_report(root, rows="category", cols="model", figures=False)
    assert "(n=3)" in (aggregated / "table.md").read_text()
    out_dir = build_report(root, rows="category", cols="seed", figures=False)
    with (out_dir / "table.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["category", "0", "1", "2"]
    for row in rows[1:]:
        assert row[1:] == [f"{values[(row[0], s)]:.3f}" for s in SEEDS]
    markdown = (out_dir / "table.md").read_text()
    assert "±" not in markdown and "n=" not in markdown and "over seeds" not in markdown


def record_drawing(monkeypatch: pytest.MonkeyPatch, name: str, record) -> list:
    """Replace ``figures.<name>`` by itself plus a log of ``record(first argument, title)`` per call."""
    from anomaly_attn.reporting import figures

    calls, draw = [], getattr(figures, name)

    def recording(first, path, *args, **kwargs):
        calls.append(record(first, kwargs.get("title", "")))
        return draw(first, path, *args, **kwargs)

    monkeypatch.setattr(figures, name, recording)
    return calls


def test_the_whole_report_builds_for_a_three_seed_sweep(seed_sweep, monkeypatch) -> None:
    root, values = seed_sweep

    def curves(panels, title):
        return title, [curve.label for panel in panels.values() for curve in panel]

    def bars(panels, title):
        return title, [series for panel in panels.values() for series in panel]

    def columns(grid, title):
        return title, [column[0] for column in grid]

    drawn = {
        "qualitative": record_drawing(monkeypatch, "qualitative_grid", columns),
        "roc": record_drawing(monkeypatch, "roc_figure", curves),
        "bars": record_drawing(monkeypatch, "per_defect_bars", bars),
    }
    out_dir = build_report(root, rows="category", cols="model", metric="pixel_auroc")
    for name in ("roc.png", "per_defect.png", "qualitative_conv_ae.png", "index.html"):
        assert (out_dir / name).stat().st_size > 5000, name
    assert "(n=3)" in (out_dir / "table.md").read_text()
    note = "lowest seed per cell (table: mean over seeds 0–2)"
    for kind in ("qualitative", "roc", "bars"):
        [(title, labels)] = drawn[kind]
        assert note in " ".join(title.split()), (kind, title)
        assert labels and all("(seed 0)" in label for label in labels), (kind, labels)
    selection = (out_dir / "selection.md").read_text().splitlines()
    assert selection[0].startswith("| dataset | category | seed | selected map |")
    assert len([line for line in selection if line.startswith("| textures |")]) == 6, "one row per run"
    page = (out_dir / "index.html").read_text()
    assert f"{statistics.fmean(values[('brick', s)] for s in SEEDS):.3f}" in page
    # The page's table shows the cells as table.md does, with the seed legend, and links the lowest seed.
    assert "± " in page and "(n=3)" in page and "mean ± sample std over seeds 0–2 (n=3)" in page
