"""The report of a sweep (or any outputs) directory: summary, tables, figures and the HTML page under
``ROOT/report/`` (what ``python -m anomaly_attn.report`` writes; its docstring lists the files)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from anomaly_attn.common.atomic import write_text_atomic
from anomaly_attn.reporting.faithfulness_table import faithfulness_markdown
from anomaly_attn.reporting.provenance import provenance_footnote
from anomaly_attn.reporting.runs import Run, check_report_keys, find_runs
from anomaly_attn.reporting.tables import (
    Table,
    _latex_escape,
    field_value,
    pivot,
    seed_key,
    seed_list,
    selected_map_label,
    selection_markdown,
    summary_markdown,
    to_csv,
    to_latex,
    to_markdown,
)
from anomaly_attn.run.store import read_image_scores

log = logging.getLogger(__name__)

# How figures name the residual control map drawn next to each run's selected map.
RESIDUAL = "residual_l2 (control)"

ID_FIELDS = (
    "experiment", "dataset", "category", "model", "selected_map", "image_score", "layer", "variant", "loss",
    "seed",
)


def _runs_by_cell(runs: list[Run], table: Table) -> dict[tuple[str, str], Run]:
    """The run each cell's pictures show: its only run, or (seeds aggregated) the one with the lowest seed."""
    if table.members:
        return {cell: group[0] for cell, group in table.members.items() if group}
    complete = [r for r in runs if r.status == "complete"]
    return {(field_value(r, table.row_field), field_value(r, table.col_field)): r for r in complete}


def picture_note(table: Table) -> str:
    """The line figures add to their title where the table aggregates seeds ('' where it does not): a
    picture shows one run per cell, the one with the lowest seed."""
    if not table.aggregated:
        return ""
    seeds = sorted({s for cell in table.stats.values() for s in cell.seeds}, key=seed_key)
    return f"\nlowest seed per cell (table: mean over seeds {seed_list(seeds)})"


def _wrap_lines(text: str, width: int) -> str:
    """Each line of ``text`` wrapped at ``width`` characters (at least 30), so a title fits its figure."""
    import textwrap

    return "\n".join(textwrap.fill(line, max(width, 30)) for line in text.split("\n"))


def _picture_label(run: Run, table: Table, text: str) -> str:
    """``text`` with the run's seed added where the table aggregates seeds."""
    return f"{text} (seed {run.value('seed')})" if table.aggregated else text


def safe_name(value: str) -> str:
    """``value`` as a portable file-name part: ASCII letters, digits, ``-`` and ``.``, with ``σ`` and
    ``×`` of map labels spelt out and every other run of characters one ``_`` (``residual_ssim σ2`` →
    ``residual_ssim_sigma2``)."""
    spelt = value.replace("σ", "sigma").replace("×", "_x_")
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-.") else "_" for c in spelt)
    return re.sub(r"_+", "_", kept).strip("_") or "selected"


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
                label = f"{_picture_label(run, table, row)}\n{selected_map_label(run)}"
                columns.append((label, defective[0], threshold))
        if columns:
            path = out_dir / f"qualitative_{safe_name(col)}.png"
            note = _wrap_lines(picture_note(table), 25 * len(columns))
            qualitative_grid(columns, path, title=f"{table.col_field}={col}{note}")
            written.append(path)
    return written


def score_label(run: Run) -> str:
    """What a run's ``score_selected`` column is: the selected image score, which may read another map
    than the selected one (``max of residual_l2`` next to the map ``residual_ssim σ1``); the selected
    map added where the score names only its reduction (``max``). Runs from before image-score
    selection scored their map by its maximum."""
    score = str(run.value("image_score") or "max")
    return score if " of " in score else f"{score} of {selected_map_label(run)}"


def series_label(col: str, what: str) -> str:
    """A legend entry: the column value, then what was measured (``conv_ae: max of residual_ssim σ2``),
    or only the latter where it names the column value already: with ``--cols layer`` a run whose
    selected map has no layer has that map as its column value."""
    return what if what == col or what.endswith(f" of {col}") else f"{col}: {what}"


def roc_figure_for(runs: list[Run], table: Table, out_dir: Path) -> Path | None:
    """``roc.png``: one panel per row value; per column value, the run's selected image score (solid,
    named by what it is, e.g. ``max of residual_ssim σ2``) and the same run's residual_l2 control
    (dashed, same colour)."""
    from anomaly_attn.reporting.figures import RocCurve, roc_figure

    cells = _runs_by_cell(runs, table)
    panels: dict[str, list[RocCurve]] = {}
    for row in table.row_keys:
        curves = []
        for col in table.col_keys:
            run = cells.get((row, col))
            scores = read_image_scores(run.path) if run else None
            if scores is None or "score_selected" not in scores or len(set(scores["label"].tolist())) < 2:
                continue
            labels = scores["label"]
            selected = _picture_label(run, table, series_label(col, score_label(run)))
            curves.append(RocCurve(selected, scores["score_selected"], labels))
            if "score_residual_l2" in scores:
                residual = _picture_label(run, table, series_label(col, RESIDUAL))
                curves.append(RocCurve(residual, scores["score_residual_l2"], labels, control=True))
        if curves:
            panels[f"{table.row_field}={row}"] = curves
    if not panels:
        return None
    path = out_dir / "roc.png"
    roc_figure(panels, path, title=f"image-level ROC (AUROC in brackets){picture_note(table)}")
    return path


def per_defect_figure(runs: list[Run], table: Table, out_dir: Path) -> Path | None:
    """``per_defect.png`` from metrics.json ``per_defect``: per column value, the selected map (pixel
    AUROC) or the selected image score (image AUROC, without masks) next to the residual_l2 control."""
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
            selected = selected_map_label(run) if has_pixels else score_label(run)
            for label, key in ((selected, "per_defect"), (RESIDUAL, "controls.residual_l2.per_defect")):
                breakdown = run.value(key) or {}
                values = {d: float(v[metric]) for d, v in breakdown.items() if metric in v}
                if values:
                    series[_picture_label(run, table, series_label(col, label))] = values
        if series:
            panels[f"{table.row_field}={row}"] = series
    if not panels:
        return None
    path = out_dir / "per_defect.png"
    title = f"{metric} per defect type (normal images vs each type){picture_note(table)}"
    per_defect_bars(panels, path, metric, title=title)
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
    faithfulness = faithfulness_markdown(runs)
    if faithfulness:
        write_text_atomic(out_dir / "faithfulness.md", faithfulness)
    table = pivot(runs, rows, cols, metric)
    footnote = provenance_footnote(runs)
    write_text_atomic(out_dir / "table.md", to_markdown(table) + f"\n{footnote}\n")
    tex_footnote = _latex_escape(footnote).replace("≤", r"$\le$").replace("^", r"\^{}")
    write_text_atomic(out_dir / "table.tex", to_latex(table) + f"\n{{\\footnotesize {tex_footnote}}}\n")
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

    write_html(runs, table, root, out_dir, written, validation_samples=figures, faithfulness_md=faithfulness)
    return out_dir
