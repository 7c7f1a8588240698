"""Tables from runs: pivot a metric over two fields, render as Markdown, LaTeX (booktabs) and CSV."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from anomaly_attn.reporting.runs import Run


@dataclass
class Table:
    """A pivot: one row per value of ``rows``, one column per value of ``cols``, cells = metric."""

    row_field: str
    col_field: str
    metric: str
    row_keys: list[str]
    col_keys: list[str]
    cells: dict[tuple[str, str], float]
    stale: set[tuple[str, str]] = field(default_factory=set)  # cells from runs marked Run.stale

    def value(self, row: str, col: str) -> float:
        return self.cells.get((row, col), math.nan)

    def column_means(self) -> list[float]:
        means = []
        for col in self.col_keys:
            values = [self.value(r, col) for r in self.row_keys if not math.isnan(self.value(r, col))]
            means.append(sum(values) / len(values) if values else math.nan)
        return means


def field_value(run: Run, fields: str) -> str:
    """The run's value of ``fields``; several comma-separated fields give ``a/b/c``. A ``layer`` that
    selection left empty (it chose a map computed at no layer, such as ``residual_ssim σ2``) reads as
    the selected map's label, as does a missing ``selected_map``, so tables, figure labels and file
    names never say ``None``; any other missing value reads '–'."""
    return "/".join(_field_text(run, field.strip()) for field in fields.split(","))


def _field_text(run: Run, field: str) -> str:
    value = run.value(field)
    if value is None and field in ("layer", "selected_map"):
        value = selected_map_label(run)
    return "–" if value is None else str(value)


def selected_map_label(run: Run) -> str:
    """The map a run reports (metrics.json ``selected_map``, e.g. ``residual_ssim σ2`` or
    ``layercam@encoder.1[residual]×residual_l2``; else ``selection.chosen.label``); the configured
    map variant for runs from before selection; ``selected map`` when nothing names it."""
    for key in ("selected_map", "selection.chosen.label", "variant"):
        value = run.value(key)
        if isinstance(value, str) and value:
            return value
    return "selected map"


def pivot(runs: list[Run], rows: str, cols: str, metric: str) -> Table:
    """Pivot complete runs. Two runs landing in one cell is an error (ambiguous table). ``rows`` and
    ``cols`` are metrics.json (or config.yaml) keys, several joined by commas (``category,dataset``)."""
    cells: dict[tuple[str, str], float] = {}
    stale: set[tuple[str, str]] = set()
    row_keys: list[str] = []
    col_keys: list[str] = []
    for run in runs:
        if run.status != "complete":
            continue
        row, col = field_value(run, rows), field_value(run, cols)
        value = run.value(metric)
        if (row, col) in cells:
            raise ValueError(
                f"Two runs give {rows}={row}, {cols}={col} (e.g. {run.path}); choose --rows/--cols that "
                f"separate them (metrics.json or config.yaml keys, several joined by commas: dataset, "
                f"category, model, selected_map, loss, seed, dataset.corruption, map.weight, ...)."
            )
        cells[(row, col)] = float(value) if isinstance(value, (int, float)) else math.nan
        if run.stale:
            stale.add((row, col))
        if row not in row_keys:
            row_keys.append(row)
        if col not in col_keys:
            col_keys.append(col)
    return Table(rows, cols, metric, sorted(row_keys), sorted(col_keys), cells, stale)


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def to_markdown(table: Table) -> str:
    header = f"| {table.row_field} \\ {table.col_field} | " + " | ".join(table.col_keys) + " |"
    lines = [f"{table.metric}", "", header, "|" + "---|" * (len(table.col_keys) + 1)]
    for row in table.row_keys:
        cells = [_fmt(table.value(row, c)) + ("†" if (row, c) in table.stale else "") for c in table.col_keys]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_fmt(v) for v in table.column_means()) + " |")
    if table.stale:
        lines += ["", "† from a run whose config or code differs from the rest of its sweep (summary.md)."]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(table: Table) -> str:
    """booktabs table; the best value of each row in bold; a mean row."""
    spec = "l" + "c" * len(table.col_keys)
    lines = [
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join([_latex_escape(table.row_field)] + [_latex_escape(c) for c in table.col_keys]) + r" \\",
        r"\midrule",
    ]
    for row in table.row_keys:
        values = [table.value(row, c) for c in table.col_keys]
        finite = [v for v in values if not math.isnan(v)]
        best = max(finite) if finite else math.nan
        cells = [
            rf"\textbf{{{_fmt(v)}}}" if finite and v == best and len(finite) > 1 else _fmt(v) for v in values
        ]
        lines.append(" & ".join([_latex_escape(row)] + cells) + r" \\")
    lines.append(r"\midrule")
    lines.append(" & ".join(["mean"] + [_fmt(v) for v in table.column_means()]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([table.row_field, *table.col_keys])
    for row in table.row_keys:
        writer.writerow([row, *(f"{table.value(row, c):.3f}" for c in table.col_keys)])
    return buffer.getvalue()


SUMMARY_COLUMNS = (
    ("selected map pixel AUROC", "pixel_auroc"),
    ("residual pixel AUROC", "controls.residual_l2.pixel_auroc"),
    ("1-SSIM pixel AUROC", "controls.residual_ssim.pixel_auroc"),
    ("image high-pass pixel AUROC", "controls.image_highpass.pixel_auroc"),
    ("selected map AUPRO", "pixel_aupro"),
    ("residual AUPRO", "controls.residual_l2.pixel_aupro"),
    ("selected image score AUROC", "image_auroc"),
    ("residual image AUROC", "controls.residual_l2.image_auroc"),
)


def _run_line(ids: list[str], run: Run, columns: tuple[tuple[str, str], ...]) -> str:
    """A Markdown row: the identifying cells, then each column's value (3 decimals, – if missing)."""
    values = [run.value(key) for _, key in columns]
    cells = [_fmt(float(v)) if isinstance(v, (int, float)) else "–" for v in values]
    return "| " + " | ".join([*ids, *cells]) + " |"


def _mean_line(id_count: int, runs: list[Run], columns: tuple[tuple[str, str], ...]) -> str:
    """The **mean** row over ``runs`` (NaN and missing values left out), under ``id_count`` id cells."""
    means = []
    for _, key in columns:
        values = [float(r.value(key)) for r in runs if isinstance(r.value(key), (int, float))]
        values = [v for v in values if not math.isnan(v)]
        means.append(_fmt(sum(values) / len(values)) if values else "–")
    return "| **mean** |" + " |" * (id_count - 1) + " " + " | ".join(means) + " |"


def summary_markdown(runs: list[Run]) -> str:
    """One row per complete run: the selected map next to the residual and the non-gradient controls."""
    id_fields = ("dataset", "category", "model", "selected_map", "loss")
    header = "| " + " | ".join(id_fields) + " | " + " | ".join(c for c, _ in SUMMARY_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(id_fields) + len(SUMMARY_COLUMNS))]
    complete = [r for r in runs if r.status == "complete"]
    for run in complete:
        lines.append(_run_line([field_value(run, f) for f in id_fields], run, SUMMARY_COLUMNS))
    if complete:
        lines.append(_mean_line(len(id_fields), complete, SUMMARY_COLUMNS))
    stale = [r for r in complete if r.stale]
    if stale:
        lines.append("")
        lines.append("Runs that may not belong with the rest of their sweep (re-run or report them apart):")
        lines.extend(f"- {r.path} — {r.stale}" for r in stale)
    others = [r for r in runs if r.status != "complete"]
    if others:
        lines.append("")
        lines.append("Runs without results:")
        lines.extend(f"- {r.status}: {r.path} — {r.error}" for r in others)
    return "\n".join(lines) + "\n"


# (header, metrics.json key) pairs of the selection table: validation (synthetic anomalies on held-out
# normals) next to test, for the selected map, the residual and the other controls.
SELECTION_COLUMNS = (
    ("val pixel AUROC", "validation.pixel_auroc"),
    ("test pixel AUROC", "pixel_auroc"),
    ("residual val", "controls.residual_l2.validation.pixel_auroc"),
    ("residual test", "controls.residual_l2.pixel_auroc"),
    ("1-SSIM test", "controls.residual_ssim.pixel_auroc"),
    ("res. high-pass test", "controls.residual_highpass.pixel_auroc"),
    ("img high-pass test", "controls.image_highpass.pixel_auroc"),
    ("val AUPRO", "validation.pixel_aupro"),
    ("test AUPRO", "pixel_aupro"),
    ("residual test AUPRO", "controls.residual_l2.pixel_aupro"),
    ("val image AUROC", "selection.chosen_image_score.validation.image_auroc"),
    ("test image AUROC", "image_auroc"),
    ("residual test image AUROC", "controls.residual_l2.image_auroc"),
)


def selection_markdown(runs: list[Run]) -> str:
    """What selection chose per run, validation and test side by side with the residual and controls."""
    complete = [r for r in runs if r.status == "complete"]
    header = ["dataset", "category", "selected map", "image score", *(c for c, _ in SELECTION_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in complete:
        ids = [
            field_value(run, "dataset"),
            field_value(run, "category"),
            field_value(run, "selected_map"),
            str(run.value("image_score") or "max"),
        ]
        lines.append(_run_line(ids, run, SELECTION_COLUMNS))
    if complete:
        lines.append(_mean_line(4, complete, SELECTION_COLUMNS))
    spearman = [
        (str(r.value("category")), r.value("selection.posthoc_spearman"))
        for r in complete
        if isinstance(r.value("selection.posthoc_spearman"), (int, float))
    ]
    if spearman:
        lines.append("")
        lines.append(
            "Post-hoc (never used to choose): Spearman correlation of validation and test objective "
            "over all candidates: " + ", ".join(f"{c} {_fmt(float(v))}" for c, v in spearman)
        )
    return "\n".join(lines) + "\n"
