"""Report tables and figures from run directories: numbers equal metrics.json; ROC axes; per-defect."""

from __future__ import annotations

import csv
import json
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_attn.cli.report import build_report, log_report_to_wandb, main
from anomaly_attn.metrics import aupro, image_auroc, pixel_auroc
from anomaly_attn.metrics.per_defect import PerDefectMetrics
from anomaly_attn.reporting.figures import roc_points, save_samples
from anomaly_attn.version import __version__

CATEGORIES = ("brick", "grass")
LAYERS = ("encoder.14", "encoder.21")


def write_run(run_dir: Path, category: str, layer: str, rng: np.random.Generator) -> dict:
    """A complete run directory as train writes it (metrics.json, per_image_scores.csv, samples.npz)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"category: {category}\nlayer: {layer}\n")
    labels = np.r_[np.zeros(6, int), np.ones(6, int)]
    scores = rng.random(12) + 0.4 * labels
    residual = rng.random(12) + 0.8 * labels
    defects = ["good"] * 6 + ["crack"] * 3 + ["hole"] * 3
    metrics = {
        "pixel_auroc": float(rng.uniform(0.5, 1.0)),
        "pixel_aupro": float(rng.uniform(0.2, 0.9)),
        "image_auroc": image_auroc(scores, labels),
        "dataset": "textures",
        "category": category,
        "model": "conv_ae",
        "layer": layer,
        "attention": "seed",
        "loss": "mse",
        "seed": 0,
        "experiment": "unit",
        "per_defect": {
            d: {"image_auroc": 0.7, "pixel_auroc": float(rng.random())} for d in ("crack", "hole")
        },
        "controls": {
            "residual_l2": {
                "pixel_auroc": float(rng.uniform(0.5, 1.0)),
                "image_auroc": image_auroc(residual, labels),
                "per_defect": {d: {"image_auroc": 0.9, "pixel_auroc": 0.8} for d in ("crack", "hole")},
            }
        },
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with (run_dir / "per_image_scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "defect_type", "label", "score_attention", "score_residual_l2"])
        for i in range(12):
            writer.writerow([f"{i}.png", defects[i], labels[i], scores[i], residual[i]])
    (run_dir / "figures").mkdir()
    mask = np.zeros((16, 16), np.float32)
    mask[4:8, 4:8] = 1
    sample = {
        "image": rng.random((1, 16, 16)),
        "mask": mask,
        "map": rng.random((16, 16)),
        "label": 1,
        "defect_type": "crack",
        "score": 0.5,
    }
    save_samples(
        [dict(sample, label=0, defect_type="good"), sample], run_dir / "figures" / "samples.npz", 0.4
    )
    return metrics


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, dict]:
    """A 2x2 (category x layer) sweep directory and one failed job."""
    rng = np.random.default_rng(0)
    metrics = {}
    for category in CATEGORIES:
        for layer in LAYERS:
            metrics[(category, layer)] = write_run(
                tmp_path / f"category={category},layer={layer}", category, layer, rng
            )
    failed = tmp_path / "category=gravel,layer=encoder.14"
    failed.mkdir()
    (failed / "config.yaml").write_text("category: gravel\n")
    (failed / "error.txt").write_text("RuntimeError: out of memory\n")
    return tmp_path, metrics


def test_report_tables_equal_the_runs_metrics_to_three_decimals(sweep: tuple[Path, dict]) -> None:
    root, metrics = sweep
    out_dir = build_report(root, rows="category", cols="layer", metric="pixel_auroc")
    with (out_dir / "table.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["category", *LAYERS]
    for row in rows[1:]:
        for layer, cell in zip(LAYERS, row[1:], strict=True):
            assert cell == f"{metrics[(row[0], layer)]['pixel_auroc']:.3f}"
    markdown, latex = (out_dir / "table.md").read_text(), (out_dir / "table.tex").read_text()
    for value in metrics.values():
        assert f"{value['pixel_auroc']:.3f}" in markdown and f"{value['pixel_auroc']:.3f}" in latex
    mean_14 = np.mean([metrics[(c, "encoder.14")]["pixel_auroc"] for c in CATEGORIES])
    assert f"| **mean** | {mean_14:.3f} |" in markdown
    summary = (out_dir / "summary.md").read_text()
    assert "failed" in summary and "out of memory" in summary
    for name in ("roc.png", "per_defect.png", "qualitative_encoder.14.png", "qualitative_encoder.21.png"):
        assert (out_dir / name).stat().st_size > 5000, name


def test_report_reads_old_runs_whose_controls_are_under_baselines(sweep: tuple[Path, dict]) -> None:
    """Run directories written before the rename (metrics.json `baselines`) still report their controls."""
    root, metrics = sweep
    for category in CATEGORIES:
        for layer in LAYERS:
            path = root / f"category={category},layer={layer}" / "metrics.json"
            on_disk = json.loads(path.read_text())
            on_disk["baselines"] = on_disk.pop("controls")
            path.write_text(json.dumps(on_disk))
    out_dir = build_report(root, rows="category", cols="layer", metric="controls.residual_l2.pixel_auroc")
    with (out_dir / "table.csv").open() as handle:
        rows = list(csv.reader(handle))
    for row in rows[1:]:
        for layer, cell in zip(LAYERS, row[1:], strict=True):
            assert cell == f"{metrics[(row[0], layer)]['controls']['residual_l2']['pixel_auroc']:.3f}"
    summary = (out_dir / "summary.md").read_text()
    residual = metrics[("brick", "encoder.14")]["controls"]["residual_l2"]["pixel_auroc"]
    assert f"{residual:.3f}" in summary


def test_figures_follow_comma_joined_rows_like_the_table(sweep: tuple[Path, dict]) -> None:
    root, _ = sweep
    out_dir = build_report(root, rows="category,layer", cols="model", metric="pixel_auroc")
    assert "| brick/encoder.14 |" in (out_dir / "table.md").read_text()
    for name in ("roc.png", "per_defect.png", "qualitative_conv_ae.png"):
        assert (out_dir / name).stat().st_size > 5000, name


def test_report_cli_exits_non_zero_when_a_job_failed(sweep: tuple[Path, dict]) -> None:
    root, _ = sweep
    assert main([str(root), "--cols", "layer", "--no-figures"]) == 1
    assert not (root / "report" / "roc.png").exists()


def test_roc_points_put_false_positive_rate_first_and_integrate_to_the_auroc() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.1])
    labels = np.array([1, 0, 1, 0, 0])
    fpr, tpr = roc_points(scores, labels)
    # Thresholds 0.9, 0.8, 0.7 (a tie: one positive and one negative at once), 0.1.
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)
    assert area == pytest.approx(image_auroc(scores, labels))


def test_per_defect_metrics_equal_the_metrics_of_good_plus_that_defect() -> None:
    rng = np.random.default_rng(1)
    types = rng.choice(["good", "scratch", "hole"], 30)
    masks = np.zeros((30, 1, 16, 16), np.float32)
    maps = rng.random((30, 1, 16, 16)).astype(np.float32)
    for i, defect in enumerate(types):
        if defect != "good":
            y, x = rng.integers(2, 10, 2)
            masks[i, 0, y : y + 4, x : x + 4] = 1
            maps[i, 0, y : y + 4, x : x + 4] += 0.5 if defect == "hole" else 0.1
    scores = maps.reshape(30, -1).max(axis=1)
    metric = PerDefectMetrics(fpr_limit=0.3)
    for start in range(0, 30, 7):  # batches mixing types
        part = slice(start, start + 7)
        metric.update(
            torch.tensor(maps[part]), torch.tensor(masks[part]), torch.tensor(scores[part]), list(types[part])
        )
    results = metric.compute()
    assert set(results) == {"hole", "scratch"}
    for defect, entry in results.items():
        subset = (types == "good") | (types == defect)
        assert entry["n_images"] == int((types == defect).sum())
        assert entry["image_auroc"] == pytest.approx(image_auroc(scores[subset], (types[subset] != "good")))
        assert entry["pixel_auroc"] == pytest.approx(pixel_auroc(maps[subset], masks[subset]), abs=1e-4)
        assert entry["pixel_aupro"] == pytest.approx(aupro(maps[subset], masks[subset]), abs=1e-4)
    assert results["hole"]["pixel_auroc"] > results["scratch"]["pixel_auroc"]


def test_report_logs_a_wandb_table_offline(sweep: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    root, _ = sweep
    out_dir = build_report(root, figures=False)
    run_dir = Path(log_report_to_wandb(root, out_dir, "category", "layer", "pixel_auroc"))
    assert list((out_dir / "wandb").glob("offline-run-*")), "one offline report run"
    assert run_dir.exists()


def test_roc_legend_names_each_runs_selected_map(sweep: tuple[Path, dict], monkeypatch) -> None:
    """A run whose selection chose a control map is not labelled "attention" in roc.png; runs from before
    selection (no selected_map) keep their attention variant's name."""
    from anomaly_attn.reporting import figures

    root, _ = sweep
    brick = root / "category=brick,layer=encoder.14" / "metrics.json"
    metrics = json.loads(brick.read_text())
    brick.write_text(json.dumps({**metrics, "selected_map": "residual_ssim σ1"}))
    drawn, draw = {}, figures.roc_figure
    monkeypatch.setattr(
        figures, "roc_figure", lambda panels, *a, **k: (drawn.update(panels), draw(panels, *a, **k))
    )
    build_report(root, rows="category", cols="layer", metric="pixel_auroc")
    labels = {curve.label for curves in drawn.values() for curve in curves}
    assert "encoder.14: max of residual_ssim σ1" in labels and "encoder.21: max of mean_abs_cam" in labels
    assert not any(label.endswith(" attention") for label in labels), labels


def test_the_report_command_reads_the_run_directories_once(sweep: tuple[Path, dict], monkeypatch) -> None:
    from anomaly_attn.cli import report as report_cli
    from anomaly_attn.reporting import sweep_report as reporting

    calls = []
    real = reporting.find_runs

    def counting(root):
        calls.append(root)
        return real(root)

    monkeypatch.setattr(report_cli, "find_runs", counting)
    monkeypatch.setattr(reporting, "find_runs", counting)
    root, _ = sweep
    assert main([str(root), "--no-figures"]) == 1  # the fixture's failed job
    assert len(calls) == 1


def png_width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")


def overview(page: str) -> str:
    return re.search(r'<p id="overview">(.*?)</p>', page).group(1)


def test_report_page_counts_runs_in_the_singular_and_plural(tmp_path_factory, sweep) -> None:
    rng = np.random.default_rng(3)
    for count in (1, 2):
        root = tmp_path_factory.mktemp(f"{count}_runs")  # outside the sweep's folder
        for category in CATEGORIES[:count]:
            write_run(root / f"category={category}", category, "encoder.14", rng)
        page = (build_report(root, figures=False) / "index.html").read_text()
        complete = "1 run" if count == 1 else "2 runs"
        assert overview(page) == f"{complete} under <code>{root}</code>: {count} complete, 0 failed, " \
            f"0 incomplete. anomaly_attn {__version__}."
        assert 'id="failed-runs"' not in page
    root, _ = sweep
    page = (build_report(root, figures=False) / "index.html").read_text()
    assert overview(page).startswith(f"5 runs under <code>{root}</code>: 4 complete, 1 failed, 0 incomplete.")
    assert "<h2>Runs without results (1)</h2><p>This run is missing from the tables and figures. Re-run " \
        "the same command to retry it (finished jobs are skipped).</p>" in page


ROC_CAPTION = (
    "roc.png Image-level ROC, one panel per row value: per column value, the run's selected image score "
    "(solid, named in the legend, e.g. “max of residual_ssim σ2”) and the same run's residual_l2 control "
    "map (dashed, same colour); AUROC in brackets, false-positive rate on x."
)


def test_roc_caption_docstring_and_drawing_agree(sweep: tuple[Path, dict], monkeypatch) -> None:
    """The selected image score is drawn solid and named by what it is; the residual_l2 control is
    dashed in its run's colour, as the page's caption and the command's docstring say."""
    from anomaly_attn.cli import report as report_cli
    from anomaly_attn.reporting import figures

    root, _ = sweep
    lines, save = {}, figures._save_figure

    def recording(fig, path, title):
        if path.name == "roc.png":
            for ax in fig.axes:
                curves = [line for line in ax.lines if line.get_linestyle() != ":"]
                lines[ax.get_title()] = [(c.get_label(), c.get_linestyle(), c.get_color()) for c in curves]
        save(fig, path, title)

    monkeypatch.setattr(figures, "_save_figure", recording)
    out_dir = build_report(root, rows="category", cols="layer", metric="pixel_auroc")
    assert sorted(lines) == ["category=brick", "category=grass"]
    for curves in lines.values():
        assert len(curves) == 4
        pairs = zip(curves[::2], curves[1::2], strict=True)
        for layer, (selected, control) in zip(LAYERS, pairs, strict=True):
            assert selected[0].startswith(f"{layer}: max of mean_abs_cam (") and selected[1] == "-"
            assert control[0].startswith(f"{layer}: residual_l2 (control) (") and control[1] == "--"
            assert selected[2] == control[2], "a run's control in its selected curve's colour"
    page = (out_dir / "index.html").read_text()
    caption = re.search(r'<figure id="figure-roc">.*?<figcaption>(.*?)</figcaption>', page).group(1)
    assert unescape(re.sub(r"<[^>]+>", "", caption)) == ROC_CAPTION
    docstring = " ".join(report_cli.__doc__.split())
    assert "the run's selected image score (solid, named in the legend by what it is, e.g. ``max of " \
        "residual_ssim σ2``) and the same run's residual_l2 control map (dashed, same colour)" in docstring
    assert png_width(out_dir / "roc.png") == 1210, "two panels side by side at 110 dpi"


def spy(monkeypatch: pytest.MonkeyPatch, name: str, record) -> list:
    """Replace ``figures.<name>`` by itself plus a log of ``record(first argument)`` per call."""
    from anomaly_attn.reporting import figures

    calls, draw = [], getattr(figures, name)

    def recording(first, *args, **kwargs):
        calls.append(record(first))
        return draw(first, *args, **kwargs)

    monkeypatch.setattr(figures, name, recording)
    return calls


def null_layer_sweep(root: Path) -> Path:
    """Two categories whose selection chose residual_ssim σ2, a map at no layer: metrics.json and
    config.yaml hold ``layer: null``."""
    rng = np.random.default_rng(4)
    for category in CATEGORIES:
        run_dir = root / f"category={category}"
        metrics = write_run(run_dir, category, "encoder.14", rng)
        metrics.update(layer=None, map="residual_ssim", selected_map="residual_ssim σ2",
                       image_score="max of residual_ssim σ2")
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        (run_dir / "config.yaml").write_text(f"category: {category}\nlayer: null\n")
    return root


@pytest.mark.parametrize(
    ("cols", "column", "roc", "bars"),
    [
        (
            "layer",
            "residual_ssim_sigma2",
            ["max of residual_ssim σ2", "residual_ssim σ2: residual_l2 (control)"],
            ["residual_ssim σ2", "residual_ssim σ2: residual_l2 (control)"],
        ),
        (
            "model",
            "conv_ae",
            ["conv_ae: max of residual_ssim σ2", "conv_ae: residual_l2 (control)"],
            ["conv_ae: residual_ssim σ2", "conv_ae: residual_l2 (control)"],
        ),
    ],
)
def test_a_layer_left_empty_by_selection_is_named_by_the_selected_map(
    tmp_path: Path, monkeypatch, cols: str, column: str, roc: list[str], bars: list[str]
) -> None:
    root = null_layer_sweep(tmp_path)
    drawn = {
        "roc": spy(monkeypatch, "roc_figure", lambda panels: [[c.label for c in v] for v in panels.values()]),
        "bars": spy(monkeypatch, "per_defect_bars", lambda panels: [list(v) for v in panels.values()]),
        "qualitative": spy(monkeypatch, "qualitative_grid", lambda columns: [c[0] for c in columns]),
    }
    out_dir = build_report(root, rows="category", cols=cols)
    assert drawn["roc"] == [[roc, roc]] and drawn["bars"] == [[bars, bars]]
    assert drawn["qualitative"] == [["brick\nresidual_ssim σ2", "grass\nresidual_ssim σ2"]]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([
        "index.html", "per_defect.png", f"qualitative_{column}.png", "roc.png", "selection.md", "summary.md",
        "table.csv", "table.md", "table.tex",
    ])
    for name in ("index.html", "summary.md", "selection.md", "table.md", "table.csv"):
        assert "None" not in (out_dir / name).read_text(), name
    header = (out_dir / "table.csv").read_text().splitlines()[0]
    assert header == ("category,residual_ssim σ2" if cols == "layer" else "category,conv_ae")
    assert png_width(out_dir / "roc.png") == 1210


def test_legend_entries_and_file_names_of_map_labels() -> None:
    from anomaly_attn.reporting.sweep_report import safe_name, series_label

    assert series_label("residual_ssim σ2", "max of residual_ssim σ2") == "max of residual_ssim σ2"
    assert series_label("residual_ssim σ1", "max of residual_l2") == "residual_ssim σ1: max of residual_l2"
    assert series_label("1", "max of residual_ssim σ1") == "1: max of residual_ssim σ1", "--cols seed"
    assert safe_name("residual_ssim σ2") == "residual_ssim_sigma2"
    layercam = "layercam@encoder.1[residual]×residual_l2 σ2"
    assert safe_name(layercam) == "layercam_encoder.1_residual_x_residual_l2_sigma2"
    assert safe_name("???") == "selected"


def test_the_roc_legend_names_an_image_score_read_from_another_map_as_it_is(tmp_path: Path) -> None:
    """Selection may pair the map residual_ssim σ1 with the image score max of residual_l2 (a real
    quickstart run): score_selected is then that score, not one of residual_ssim σ1."""
    from anomaly_attn.reporting.runs import Run
    from anomaly_attn.reporting.sweep_report import score_label

    run = Run(tmp_path, {"selected_map": "residual_ssim σ1", "image_score": "max of residual_l2"})
    assert score_label(run) == "max of residual_l2"
    assert score_label(Run(tmp_path, {"selected_map": "residual_ssim σ1", "image_score": "max"})) == (
        "max of residual_ssim σ1"
    )


def test_runs_behind_symbolic_links_are_found_once_and_a_link_loop_ends(tmp_path: Path) -> None:
    """A ROOT of links to runs kept elsewhere (e.g. two sweeps' runs side by side for --compare)."""
    from anomaly_attn.reporting.runs import find_runs

    rng = np.random.default_rng(0)
    elsewhere = tmp_path / "elsewhere"
    write_run(elsewhere / "a", "brick", "encoder.14", rng)
    write_run(elsewhere / "b", "grass", "encoder.14", rng)
    root = tmp_path / "root"
    root.mkdir()
    (root / "run_a").symlink_to(elsewhere / "a")
    (root / "run_b").symlink_to(elsewhere / "b")
    (root / "loop").symlink_to(root)  # a link back to the root itself
    runs = find_runs(root)
    assert sorted(run.path.name for run in runs) == ["run_a", "run_b"]
    assert all(run.status == "complete" for run in runs)
    assert sorted(run.value("category") for run in runs) == ["brick", "grass"]
