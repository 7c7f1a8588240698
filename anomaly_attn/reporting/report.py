"""The report of a sweep (or any outputs) directory: summary, tables, figures and the HTML page under
``ROOT/report/`` (what ``python -m anomaly_attn.report`` writes; its docstring lists the files)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np

from anomaly_attn.common.atomic import write_text_atomic
from anomaly_attn.reporting.runs import Run, check_report_keys, find_runs
from anomaly_attn.reporting.tables import (
    Table,
    field_value,
    pivot,
    selection_markdown,
    summary_markdown,
    to_csv,
    to_latex,
    to_markdown,
)

log = logging.getLogger(__name__)

ID_FIELDS = (
    "experiment", "dataset", "category", "model", "selected_map", "image_score", "layer", "attention", "loss",
    "seed",
)


def _runs_by_cell(runs: list[Run], table: Table) -> dict[tuple[str, str], Run]:
    complete = [r for r in runs if r.status == "complete"]
    return {(field_value(r, table.row_field), field_value(r, table.col_field)): r for r in complete}


def _safe_name(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


def qualitative_figures(runs: list[Run], table: Table, out_dir: Path) -> list[Path]:
    """``qualitative_<col>.png`` per column value, from each run's ``figures/samples.npz``."""
    from anomaly_attn.reporting.figures import load_samples, qualitative_grid

    cells = _runs_by_cell(runs, table)
    written = []
    for col in table.col_keys:
        columns = []
        for row in table.row_keys:
            run = cells.get((row, col))
            samples_file = run.path / "figures" / "samples.npz" if run else None
            if samples_file is None or not samples_file.exists():
                continue
            samples, threshold = load_samples(samples_file)
            defective = [s for s in samples if s["label"] == 1]
            if defective:
                columns.append((row, defective[0], threshold))
        if columns:
            path = out_dir / f"qualitative_{_safe_name(col)}.png"
            qualitative_grid(columns, path, title=f"{table.col_field}={col}")
            written.append(path)
    return written


def read_image_scores(run: Run) -> dict[str, np.ndarray] | None:
    """``label`` and every ``score_*`` column of a run's per_image_scores.csv (None if absent). Runs
    written before the selected map's column was ``score_selected`` call it ``score_attention``."""
    path = run.path / "per_image_scores.csv"
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    columns = {key: np.array([float(r[key]) for r in rows]) for key in rows[0] if key.startswith("score_")}
    if "score_attention" in columns and "score_selected" not in columns:
        columns["score_selected"] = columns.pop("score_attention")
    columns["label"] = np.array([int(r["label"]) for r in rows])
    return columns


def map_label(run: Run) -> str:
    """What a run's main map is, for a legend: the selected map's label (``residual_ssim σ1``,
    ``gradcam@encoder.15``), else the configured attention variant of runs from before selection."""
    return str(run.value("selected_map") or run.value("attention") or "selected map")


def roc_figure_for(runs: list[Run], table: Table, out_dir: Path) -> Path | None:
    """``roc.png``: one panel per row value; per column value, the run's selected map (named as
    metrics.json ``selected_map`` says: gradient attention or a control map) and the residual."""
    from anomaly_attn.reporting.figures import roc_figure

    cells = _runs_by_cell(runs, table)
    panels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for row in table.row_keys:
        curves = []
        for col in table.col_keys:
            run = cells.get((row, col))
            scores = read_image_scores(run) if run else None
            if scores is None or "score_selected" not in scores or len(set(scores["label"].tolist())) < 2:
                continue
            curves.append((f"{col} {map_label(run)}", scores["score_selected"], scores["label"]))
            if "score_residual_l2" in scores:
                curves.append((f"{col} residual", scores["score_residual_l2"], scores["label"]))
        if curves:
            panels[f"{table.row_field}={row}"] = curves
    if not panels:
        return None
    path = out_dir / "roc.png"
    roc_figure(panels, path, title="image-level ROC (AUROC in brackets)")
    return path


def per_defect_figure(runs: list[Run], table: Table, out_dir: Path) -> Path | None:
    """``per_defect.png`` from metrics.json ``per_defect`` (selected map and residual per column value)."""
    from anomaly_attn.reporting.figures import per_defect_bars

    cells = _runs_by_cell(runs, table)
    has_pixels = any(
        "pixel_auroc" in entry for r in cells.values() for entry in (r.value("per_defect") or {}).values()
    )
    metric = "pixel_auroc" if has_pixels else "image_auroc"
    panels: dict[str, dict[str, dict[str, float]]] = {}
    for row in table.row_keys:
        series: dict[str, dict[str, float]] = {}
        for col in table.col_keys:
            run = cells.get((row, col))
            if run is None:
                continue
            residual = "controls.residual_l2.per_defect"
            for label, key in ((map_label(run), "per_defect"), ("residual", residual)):
                breakdown = run.value(key) or {}
                values = {d: float(v[metric]) for d, v in breakdown.items() if metric in v}
                if values:
                    series[f"{col} {label}"] = values
        if series:
            panels[f"{table.row_field}={row}"] = series
    if not panels:
        return None
    path = out_dir / "per_defect.png"
    per_defect_bars(panels, path, metric, title=f"{metric} per defect type (normal images vs each type)")
    return path


def build_report(
    root: Path,
    rows: str = "category",
    cols: str = "layer",
    metric: str = "pixel_auroc",
    out_dir: Path | None = None,
    figures: bool = True,
    runs: list[Run] | None = None,
) -> Path:
    """Write the tables (and, with ``figures``, the figures) for every run below ``root`` (``runs``: those
    runs when the caller has already read them, so that each run directory is read once)."""
    runs = find_runs(root) if runs is None else runs
    if not runs:
        raise FileNotFoundError(f"No run directories (config.yaml / metrics.json) under {root}.")
    check_report_keys(runs, rows, cols, metric)
    out_dir = out_dir or root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "summary.md", summary_markdown(runs))
    write_text_atomic(out_dir / "selection.md", selection_markdown(runs))
    table = pivot(runs, rows, cols, metric)
    write_text_atomic(out_dir / "table.md", to_markdown(table))
    write_text_atomic(out_dir / "table.tex", to_latex(table))
    write_text_atomic(out_dir / "table.csv", to_csv(table))
    grids = [r.path / "figures" / "grid.png" for r in runs if (r.path / "figures" / "grid.png").exists()]
    if grids:
        shutil.copyfile(grids[0], out_dir / "grid.png")
    written: list[Path] = []
    if figures and table.row_keys:
        written += qualitative_figures(runs, table, out_dir)
        for figure in (roc_figure_for(runs, table, out_dir), per_defect_figure(runs, table, out_dir)):
            written += [figure] if figure else []
    if figures and grids:
        written.append(out_dir / "grid.png")
    from anomaly_attn.reporting.html import write_html

    write_html(runs, table, root, out_dir, written, validation_samples=figures)
    return out_dir
