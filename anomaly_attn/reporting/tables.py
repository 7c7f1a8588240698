"""Tables from runs: pivot a metric over two fields, render as Markdown, LaTeX (booktabs) and CSV.

Seeds are a dimension of their own: runs that land in one cell and differ only in the top-level ``seed``
(their configs equal once ``seed``, ``RUN_ONLY_KEYS`` and their own output folders are left out) are
aggregated into ``mean ± sample std (n=…)``; runs that differ in anything else are refused."""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from anomaly_attn.reporting.runs import Run, config_differences

Cell = tuple[str, str]


@dataclass(frozen=True)
class CellStats:
    """One cell's metric over the seeds it holds: runs whose value is missing or NaN are left out."""

    mean: float
    std: float  # sample standard deviation (n - 1); NaN when n < 2
    n: int
    seeds: tuple[Any, ...] = ()
    values: tuple[float, ...] = ()  # per seed, in the order of ``seeds``


@dataclass
class Table:
    """A pivot: one row per value of ``rows``, one column per value of ``cols``, cells = metric (the mean
    over seeds where a cell aggregates several; ``stats`` then holds every cell's mean, std, n, seeds)."""

    row_field: str
    col_field: str
    metric: str
    row_keys: list[str]
    col_keys: list[str]
    cells: dict[Cell, float]
    stale: set[Cell] = field(default_factory=set)  # cells from runs marked Run.stale
    stats: dict[Cell, CellStats] = field(default_factory=dict)  # empty unless some cell holds 2+ seeds
    members: dict[Cell, list[Run]] = field(default_factory=dict, repr=False)  # lowest seed first

    @property
    def aggregated(self) -> bool:
        """Whether some cell averages several seeds (cells then read ``mean ± std (n=…)``)."""
        return bool(self.stats)

    def value(self, row: str, col: str) -> float:
        return self.cells.get((row, col), math.nan)

    def column_means(self) -> list[float]:
        """Per column, the mean of its rows' values (of the per-cell means where seeds are aggregated)."""
        means = []
        for col in self.col_keys:
            values = [self.value(r, col) for r in self.row_keys if not math.isnan(self.value(r, col))]
            means.append(sum(values) / len(values) if values else math.nan)
        return means

    def picture_run(self, row: str, col: str) -> Run | None:
        """The run a figure shows for a cell: its only run, or the one with the lowest seed."""
        group = self.members.get((row, col))
        return group[0] if group else None


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


def seed_key(seed: Any) -> tuple[int, float, str]:
    """Sort key of seeds: numbers in numeric order, then anything else by its text (a missing seed last)."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, float(seed), "")
    return (1 if seed is not None else 2, 0.0, str(seed))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _shown(value: Any) -> str:
    return "null" if value is None else str(value)


def check_seed_mates(cell: Cell, group: list[Run]) -> None:
    """Raise ``ValueError`` unless the runs of one cell (sorted by seed) differ only in ``seed``: name the
    first differing config keys with both values, or the seed two runs share."""
    where = f"Two runs in cell ({cell[0]}, {cell[1]})"
    first = group[0]
    for other in group[1:]:
        unreadable = next((r for r in (first, other) if not r.config()), None)
        if unreadable is not None:
            raise ValueError(
                f"{where} cannot be compared: {unreadable.path} has no readable config.yaml, so it is "
                f"unknown whether they differ only in seed ({first.path}, {other.path}); choose "
                "--rows/--cols that separate them."
            )
        differences = config_differences(first, other, ignored=("seed",))
        if differences:
            shown = ", ".join(f"{key}: {_shown(a)} vs {_shown(b)}" for key, a, b in differences[:3])
            more = f" (and {len(differences) - 3} more keys)" if len(differences) > 3 else ""
            them = "it" if len(differences) == 1 else "one of them"
            raise ValueError(
                f"{where} differ in {shown}{more}; add {them} to --rows/--cols "
                f"({first.path} vs {other.path})."
            )
    seeds = [r.value("seed") for r in group]
    for a, b in zip(group, group[1:], strict=False):
        if a.value("seed") == b.value("seed"):
            raise ValueError(
                f"{where} have the same config and seed ({_shown(a.value('seed'))}): {a.path} and {b.path}; "
                f"remove one, or choose --rows/--cols that separate them (seeds here: "
                f"{', '.join(map(_shown, seeds))})."
            )


def cell_stats(group: list[Run], metric: str) -> CellStats:
    """Mean, sample std and count of ``metric`` over a cell's runs (seeds), NaN values left out."""
    pairs = [(r.value("seed"), _number(r.value(metric))) for r in group]
    pairs = [(seed, value) for seed, value in pairs if not math.isnan(value)]
    values = tuple(value for _, value in pairs)
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return CellStats(mean, std, len(values), tuple(seed for seed, _ in pairs), values)


def pivot(runs: list[Run], rows: str, cols: str, metric: str) -> Table:
    """Pivot complete runs. ``rows`` and ``cols`` are metrics.json (or config.yaml) keys, several joined by
    commas (``category,dataset``). Runs sharing a cell that differ only in ``seed`` are aggregated (mean
    ± sample std over seeds); any other two runs in one cell are an error naming how they differ."""
    groups: dict[Cell, list[Run]] = {}
    for run in runs:
        if run.status == "complete":
            groups.setdefault((field_value(run, rows), field_value(run, cols)), []).append(run)
    stats: dict[Cell, CellStats] = {}
    for cell, group in groups.items():
        group.sort(key=lambda r: seed_key(r.value("seed")))
        if len(group) > 1:
            check_seed_mates(cell, group)
        stats[cell] = cell_stats(group, metric)
    cells = {cell: cell_stat.mean for cell, cell_stat in stats.items()}
    stale = {cell for cell, group in groups.items() if any(r.stale for r in group)}
    aggregated = any(len(group) > 1 for group in groups.values())
    return Table(
        rows, cols, metric, sorted({row for row, _ in groups}), sorted({col for _, col in groups}),
        cells, stale, stats if aggregated else {}, groups,
    )


def seed_list(seeds: list[Any]) -> str:
    """``0–2`` for three or more consecutive integer seeds, else the seeds joined by commas."""
    whole = all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if whole and len(seeds) >= 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(_shown, seeds))


def seed_legend(table: Table) -> str:
    """The line under an aggregated table: which seeds, how many per cell ('' when none aggregated)."""
    if not table.aggregated:
        return ""
    seeds = sorted({s for cell in table.stats.values() for s in cell.seeds}, key=seed_key)
    counts = sorted({cell.n for cell in table.stats.values() if cell.n})
    n = f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}–{counts[-1]}, each cell shows its n"
    return (
        f"mean ± sample std over seeds {seed_list(seeds)} ({n}); the mean row averages the per-cell means."
    )


def cell_text(table: Table, row: str, col: str, pm: str = "±", n: str = "n") -> str:
    """A cell as the tables show it: ``0.912`` for one run; ``0.912 ± 0.011 (n=3)`` over seeds when
    the table aggregates seeds (``0.912 (n=1)`` for a cell with one seed); ``–`` without a value."""
    stats = table.stats.get((row, col))
    if stats is None or not stats.n:
        return _fmt(table.value(row, col))
    if stats.n == 1:
        return f"{stats.mean:.3f} ({n}=1)"
    return f"{stats.mean:.3f} {pm} {stats.std:.3f} ({n}={stats.n})"


def _fmt(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"


def to_markdown(table: Table) -> str:
    header = f"| {table.row_field} \\ {table.col_field} | " + " | ".join(table.col_keys) + " |"
    lines = [f"{table.metric}", "", header, "|" + "---|" * (len(table.col_keys) + 1)]
    for row in table.row_keys:
        cells = [cell_text(table, row, c) + ("†" if (row, c) in table.stale else "") for c in table.col_keys]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_fmt(v) for v in table.column_means()) + " |")
    if table.aggregated:
        lines += ["", seed_legend(table)]
    if table.stale:
        lines += ["", "† from a run whose config or code differs from the rest of its sweep (summary.md)."]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def to_latex(table: Table) -> str:
    """booktabs table; the best value (mean over seeds) of each row in bold; a mean row; under an
    aggregated table, the seed legend as a last row."""
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
        texts = [cell_text(table, row, c, pm=r"$\pm$", n="$n$") for c in table.col_keys]
        cells = [
            rf"\textbf{{{text}}}" if finite and v == best and len(finite) > 1 else text
            for v, text in zip(values, texts, strict=True)
        ]
        lines.append(" & ".join([_latex_escape(row)] + cells) + r" \\")
    lines.append(r"\midrule")
    lines.append(" & ".join(["mean"] + [_fmt(v) for v in table.column_means()]) + r" \\")
    lines.append(r"\bottomrule")
    if table.aggregated:
        legend = _latex_escape(seed_legend(table)).replace("±", r"$\pm$").replace("–", "--")
        lines.append(rf"\multicolumn{{{len(table.col_keys) + 1}}}{{l}}{{\footnotesize {legend}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One line per row value, one column per column value (3 decimals); a table that aggregates seeds
    is written long instead, one line per cell, for re-analysis: row, column, mean and sample std (3
    decimals, as the tables), n, the seeds and each seed's value (full precision), both ';'-joined."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if not table.aggregated:
        writer.writerow([table.row_field, *table.col_keys])
        for row in table.row_keys:
            writer.writerow([row, *(f"{table.value(row, c):.3f}" for c in table.col_keys)])
        return buffer.getvalue()
    writer.writerow([table.row_field, table.col_field, "mean", "std", "n", "seeds", "values"])
    for row in table.row_keys:
        for col in table.col_keys:
            stats = table.stats.get((row, col))
            if stats is not None:
                writer.writerow([
                    row, col, f"{stats.mean:.3f}", f"{stats.std:.3f}", stats.n,
                    ";".join(map(_shown, stats.seeds)), ";".join(map(repr, stats.values)),
                ])
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


def _seeds_vary(runs: list[Run]) -> bool:
    """Whether complete runs hold more than one seed (the per-run tables then show each run's seed)."""
    return len({str(r.value("seed")) for r in runs if r.status == "complete"}) > 1


def summary_markdown(runs: list[Run]) -> str:
    """One row per complete run: the selected map next to the residual and the non-gradient controls
    (and the run's seed, where runs hold several)."""
    id_fields = ("dataset", "category", "model", "selected_map", "loss")
    id_fields += ("seed",) if _seeds_vary(runs) else ()
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


PAIRED_HEADER = "test − residual pixel AUROC [95% CI]"
PAIRED_LEGEND = (
    "test − residual: the selected map's test pixel AUROC minus its own model's residual_l2 map's, with "
    "the paired 95 % bootstrap interval over test images (metrics.json `intervals.paired`); * where the "
    "interval excludes 0, the only differences read as real."
)


def paired_cell(run: Run, metric: str = "pixel_auroc") -> str:
    """``+0.049 [0.031, 0.066]*`` (``*``: the interval excludes 0), or – for a run without intervals."""
    entry = run.value(f"intervals.paired.selected - residual_l2.{metric}")
    point, residual = run.value(metric), run.value(f"controls.residual_l2.{metric}")
    if not isinstance(entry, dict) or not isinstance(point, (int, float)) or residual is None:
        return "–"
    low, high = float(entry["low"]), float(entry["high"])
    mark = "*" if low > 0 or high < 0 else ""
    return f"{point - residual:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"


def selection_markdown(runs: list[Run]) -> str:
    """What selection chose per run, validation and test side by side with the residual and controls;
    one row per run, so with several seeds one row per seed (a ``seed`` column then says which)."""
    complete = [r for r in runs if r.status == "complete"]
    seeds = ["seed"] if _seeds_vary(complete) else []
    ids_header = ["dataset", "category", *seeds, "selected map", "image score"]
    header = [*ids_header, *(c for c, _ in SELECTION_COLUMNS), PAIRED_HEADER]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in complete:
        ids = [
            field_value(run, "dataset"),
            field_value(run, "category"),
            *(field_value(run, "seed") for _ in seeds),
            field_value(run, "selected_map"),
            str(run.value("image_score") or "max"),
        ]
        lines.append(_run_line(ids, run, SELECTION_COLUMNS) + f" {paired_cell(run)} |")
    if complete:
        excluding = sum(paired_cell(run).endswith("*") for run in complete)
        lines.append(_mean_line(len(ids_header), complete, SELECTION_COLUMNS)
                     + f" {excluding} of {len(complete)} exclude 0 |")
        lines += ["", PAIRED_LEGEND]
    spearman = [
        (str(r.value("category")) + (f" seed {r.value('seed')}" if seeds else ""),
         r.value("selection.posthoc_spearman"), r.value("selection.posthoc_regret"))
        for r in complete
        if isinstance(r.value("selection.posthoc_spearman"), (int, float))
    ]
    if spearman:
        cells = [f"{c} {_fmt(float(v))}" + (f" (regret {_fmt(float(g))})" if isinstance(g, float) else "")
                 for c, v, g in spearman]
        lines.append("")
        lines.append(
            "Post-hoc (never used to choose): Spearman correlation of validation and test objective "
            "over all candidates, and the regret (the best candidate's test objective minus the chosen "
            "map's): " + ", ".join(cells)
        )
    return "\n".join(lines) + "\n"
