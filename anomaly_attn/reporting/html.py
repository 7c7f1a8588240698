"""``report/index.html``: one self-contained page holding the whole report.

The page embeds its figures as base64 ``data:`` URIs and its style inline, so it can be mailed or
copied on its own; it loads nothing from the network (a Content-Security-Policy forbids it) and runs
no script. Links to the run directories are relative to the page, so they work wherever the sweep
directory is copied with its ``report/`` folder. Every piece of text (run names, fields, error
messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from html import escape
from pathlib import Path
from urllib.parse import quote

from anomaly_attn.common.atomic import write_text_atomic
from anomaly_attn.reporting.provenance import provenance_footnote
from anomaly_attn.reporting.runs import Run
from anomaly_attn.reporting.tables import Table, _fmt, cell_text, seed_legend
from anomaly_attn.version import __version__

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 84rem; padding: 0 1rem;
       color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .85rem; }
th, td { border: 1px solid #bbb; padding: .2rem .4rem; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
thead th { background: #eee; }
tr.mean td { font-weight: bold; border-top: 2px solid #888; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { margin: 1rem 0; } figcaption { font-size: .9rem; color: #444; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.badge { display: inline-block; padding: 0 .4rem; border-radius: .3rem; font-weight: bold;
         font-size: .8rem; color: #fff; }
.badge.complete { background: #2a7a2a; } .badge.failed { background: #b00020; }
.badge.incomplete { background: #b36b00; }
tr.failed td { background: #fde7ea; } tr.incomplete td { background: #fff3df; }
section.alert { border: 2px solid #b00020; background: #fff5f6; padding: 0 1rem .5rem; }
/* anywhere: a path or error without spaces wraps instead of widening the page */
code, .error { font-family: ui-monospace, monospace; font-size: .85rem; white-space: pre-wrap;
               overflow-wrap: anywhere; }
"""

# Nothing may be fetched: images are data: URIs, the style is inline, and there is no script.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

FIGURE_CAPTIONS = {
    "qualitative": "A defective test image per row value (the run's first in defect-type order, not "
    "picked by score), titled with the run's selected map, above that map's overlay.",
    "roc": "Image-level ROC, one panel per row value: per column value, the run's selected image score "
    "(solid, named in the legend, e.g. “max of residual_ssim σ2”) and the same run's residual_l2 "
    "control map (dashed, same colour); AUROC in brackets, false-positive rate on x.",
    "per_defect": "Per-defect-type breakdown: normal test images against each defect type.",
    "grid": "The first run's own figure: test images above their overlays.",
}


def plural(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``, ``0 runs``."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def run_link(run: Run, out_dir: Path) -> str:
    """The run directory relative to ``out_dir``, as a percent-encoded URL ending in ``/``."""
    relative = Path(os.path.relpath(run.path.resolve(), out_dir.resolve())).as_posix()
    return quote(relative, safe="/") + "/"


def run_name(run: Run, root: Path) -> str:
    """The run directory relative to the report's root (the sweep's job name, e.g. ``category=a,layer=b``)."""
    try:
        return run.path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(run.path)


def image_tag(path: Path, alt: str) -> str:
    """``<img>`` with the PNG inlined as a data URI and its pixel size from the PNG header."""
    data = path.read_bytes()
    size = ""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        size = f' width="{width}" height="{height}"'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}"{size}>'


def _bold(html: str) -> str:
    """Markdown ``**bold**`` of escaped text as ``<strong>``."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html)


def _inline(text: str) -> str:
    """Escape ``text``, then turn Markdown ``**bold**`` into ``<strong>``."""
    return _bold(escape(text))


def breakable(text: str) -> str:
    """Escape ``text`` and let the browser wrap it after ``_ @ , = × /``: map labels and run names
    (``gradcam_abs@encoder.14[residual]×residual_l2``, ``category=brick,layer=encoder.14``) have no
    spaces, and unbroken they widen a table past the page."""
    return re.sub(r"([_@,=×/])", r"\1<wbr>", escape(text))


def _cell(text: str) -> str:
    """A ``<td>``: numbers (and the '–' of a missing one) right-aligned, other text left-aligned and
    wrappable (:func:`breakable`), ``**bold**`` as ``<strong>``."""
    numeric = text == "–" or re.fullmatch(r"-?\d+(\.\d+)?", text) is not None
    return f"<td>{_inline(text)}</td>" if numeric else f'<td class="text">{_bold(breakable(text))}</td>'


def markdown_to_html(markdown: str) -> str:
    """The subset of Markdown the report's ``.md`` files use: pipe tables (first row = header, the
    ``|---|`` line dropped), ``- `` bullet lists, ``**bold**`` and plain paragraphs."""
    parts: list[str] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("|"):
            block = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                block.append(lines[index].strip())
                index += 1
            rows = [
                [cell.strip() for cell in row[1 : -1 if row.endswith("|") else None].split("|")]
                for row in block
            ]
            rows = [row for row in rows if not all(re.fullmatch(r":?-+:?", cell) for cell in row)]
            header, body = rows[0], rows[1:]
            html = ['<div class="scroll"><table>', "<thead><tr>"]
            html += [f"<th>{_inline(cell)}</th>" for cell in header]
            html.append("</tr></thead><tbody>")
            for row in body:
                css = ' class="mean"' if row and row[0] == "**mean**" else ""
                html.append(f"<tr{css}>" + "".join(_cell(cell) for cell in row) + "</tr>")
            html.append("</tbody></table></div>")
            parts.append("".join(html))
            continue
        if line.startswith("- "):
            items = []
            while index < len(lines) and lines[index].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[index].strip()[2:])}</li>")
                index += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            continue
        if line:
            parts.append(f"<p>{_inline(line)}</p>")
        index += 1
    return "\n".join(parts)


def metric_table_html(table: Table, out_dir: Path) -> str:
    """The pivot of ``table.md`` (same rows, columns, cells, mean row and seed legend); each cell links to
    its run directory (over seeds: the lowest seed's, the one the figures show)."""
    head = f"{table.row_field} \\ {table.col_field}"
    html = ['<div class="scroll"><table id="metric-table">', f"<caption>{escape(table.metric)}</caption>"]
    html.append(f'<thead><tr><th scope="col">{escape(head)}</th>')
    html += [f'<th scope="col">{escape(col)}</th>' for col in table.col_keys]
    html.append("</tr></thead><tbody>")
    for row in table.row_keys:
        cells = [f'<th scope="row" class="text">{escape(row)}</th>']
        for col in table.col_keys:
            text = escape(cell_text(table, row, col) + ("†" if (row, col) in table.stale else ""))
            run = table.picture_run(row, col)
            if run is not None:
                text = f'<a href="{escape(run_link(run, out_dir))}">{text}</a>'
            cells.append(f"<td>{text}</td>")
        html.append(f'<tr data-row="{escape(row)}">' + "".join(cells) + "</tr>")
    means = "".join(f"<td>{escape(_fmt(v))}</td>" for v in table.column_means())
    html.append(f'<tr class="mean"><th scope="row" class="text">mean</th>{means}</tr>')
    html.append("</tbody></table></div>")
    if table.aggregated:
        html.append(f'<p class="legend">{escape(seed_legend(table))}</p>')
    if table.stale:
        html.append('<p class="stale">† from a run whose config or code differs from the rest of its sweep '
                    "(see the runs table).</p>")
    return "".join(html)


def runs_table_html(runs: list[Run], root: Path, out_dir: Path, metric: str) -> str:
    """Every run: status badge, a link to its directory, its identifying fields and ``metric``."""
    fields = ("dataset", "category", "model", "selected_map", "layer", "loss")
    html = ['<div class="scroll"><table id="runs-table"><thead><tr><th>status</th><th class="text">run</th>']
    html += [f'<th class="text">{escape(f)}</th>' for f in fields]
    html.append(f'<th>{escape(metric)}</th><th class="text">files / error</th></tr></thead><tbody>')
    for run in runs:
        link = run_link(run, out_dir)
        ids = "".join(f'<td class="text">{breakable(identity(run, f))}</td>' for f in fields)
        value = run.value(metric)
        number = _fmt(float(value)) if isinstance(value, (int, float)) else "–"
        if run.status == "complete":
            detail = f'<a href="{escape(link)}metrics.json">metrics.json</a>'
            if run.stale:
                detail += f' <span class="error">† {escape(run.stale)}</span>'
        else:
            has_error_file = (run.path / "error.txt").exists()
            error_file = f' (<a href="{escape(link)}error.txt">error.txt</a>)' if has_error_file else ""
            detail = f'<span class="error">{escape(run.error)}</span>{error_file}'
        html.append(
            f'<tr class="{escape(run.status)}"><td><span class="badge {escape(run.status)}">'
            f"{escape(run.status.upper())}</span></td>"
            f'<td class="text"><a href="{escape(link)}">{breakable(run_name(run, root))}</a></td>'
            f'{ids}<td>{escape(number)}</td><td class="text">{detail}</td></tr>'
        )
    html.append("</tbody></table></div>")
    return "".join(html)


def identity(run: Run, field: str) -> str:
    """``field`` of a run for the runs table. Failed and unfinished runs have no metrics.json, so their
    config.yaml answers (a config group such as ``model`` by its ``name``); '–' when neither knows."""
    value = run.value(field)
    if value is None and run.status != "complete":
        value = run.config().get(field)
        if isinstance(value, dict):
            value = value.get("name")
    return "–" if value is None else str(value)


def failed_runs_html(runs: list[Run], root: Path, out_dir: Path) -> str:
    """A red box listing the failed and unfinished runs with their first error line ('' if none)."""
    others = [r for r in runs if r.status != "complete"]
    if not others:
        return ""
    items = "".join(
        f'<li><span class="badge {escape(r.status)}">{escape(r.status.upper())}</span> '
        f'<a href="{escape(run_link(r, out_dir))}">{breakable(run_name(r, root))}</a>: '
        f'<span class="error">{escape(r.error)}</span></li>'
        for r in others
    )
    these, are, them = ("This run", "is", "it") if len(others) == 1 else ("These runs", "are", "them")
    return (
        f'<section class="alert" id="failed-runs"><h2>Runs without results ({len(others)})</h2>'
        f"<p>{these} {are} missing from the tables and figures. Re-run the same command to retry {them} "
        "(finished jobs are skipped).</p>"
        f"<ul>{items}</ul></section>"
    )


def figures_html(figures: list[Path]) -> str:
    """The report's own figures, in the order given, each with a caption."""
    parts = []
    for path in figures:
        kind = "qualitative" if path.stem.startswith("qualitative_") else path.stem
        caption = FIGURE_CAPTIONS.get(kind, "")
        parts.append(
            f'<figure id="figure-{escape(path.stem)}">{image_tag(path, path.name)}'
            f"<figcaption><code>{escape(path.name)}</code> {escape(caption)}</figcaption></figure>"
        )
    return "\n".join(parts)


def validation_samples_html(runs: list[Run], root: Path) -> str:
    """Each distinct ``figures/validation_samples.png`` once (runs of one category usually share the
    same synthetic validation set), captioned with the runs that wrote it."""
    by_content: dict[str, tuple[Path, list[str]]] = {}
    for run in runs:
        path = run.path / "figures" / "validation_samples.png"
        if path.exists():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            by_content.setdefault(digest, (path, []))[1].append(run_name(run, root))
    parts = []
    for path, names in by_content.values():
        listed = ", ".join(f"<code>{breakable(name)}</code>" for name in names)
        parts.append(
            f'<figure class="validation-samples">{image_tag(path, "synthetic validation samples")}'
            f"<figcaption>Synthetic validation anomalies (held-out normal images; never test images) "
            f"of {listed}.</figcaption></figure>"
        )
    return "\n".join(parts)


def overview_html(runs: list[Run], root: Path) -> str:
    """The opening line: how many runs were found where, how many of each status, the version."""
    counts = {s: sum(r.status == s for r in runs) for s in ("complete", "failed", "incomplete")}
    return (
        f'<p id="overview">{plural(len(runs), "run")} under <code>{escape(str(root))}</code>: '
        f"{counts['complete']} complete, {counts['failed']} failed, {counts['incomplete']} incomplete. "
        f"anomaly_attn {escape(__version__)}.</p>"
    )


def report_html(
    runs: list[Run],
    table: Table,
    root: Path,
    out_dir: Path,
    selection_md: str,
    figures: list[Path],
    validation_samples: bool = True,
    faithfulness_md: str = "",
) -> str:
    """The whole page as a string."""
    title = f"anomaly_attn report: {root.resolve().name}"
    sections = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{escape(CONTENT_SECURITY_POLICY)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        overview_html(runs, root),
        failed_runs_html(runs, root, out_dir),
        f'<section id="metric"><h2>{escape(table.metric)} by {escape(table.row_field)} and '
        f"{escape(table.col_field)}</h2>",
        metric_table_html(table, out_dir) if table.row_keys else "<p>No complete run.</p>",
        f'<p class="provenance">{escape(provenance_footnote(runs))}</p>',
        "</section>",
        '<section id="selection"><h2>Selected maps: validation and test side by side</h2>'
        "<p>Each run's map and image score were chosen on synthetic anomalies pasted into held-out "
        "normal images, never on test data.</p>",
        markdown_to_html(selection_md),
        "</section>",
    ]
    if faithfulness_md:
        sections += [
            '<section id="faithfulness"><h2>Faithfulness: does the map explain the score?</h2>',
            markdown_to_html(faithfulness_md),
            "</section>",
        ]
    if figures:
        sections += ['<section id="figures"><h2>Figures</h2>', figures_html(figures), "</section>"]
    samples = validation_samples_html(runs, root) if validation_samples else ""
    if samples:
        sections += [
            '<section id="validation-samples"><h2>Synthetic validation samples</h2>',
            samples,
            "</section>",
        ]
    sections += [
        '<section id="runs"><h2>Runs</h2>',
        runs_table_html(runs, root, out_dir, table.metric),
        "</section></body></html>",
    ]
    return "\n".join(part for part in sections if part) + "\n"


def write_html(
    runs: list[Run],
    table: Table,
    root: Path,
    out_dir: Path,
    figures: list[Path],
    validation_samples: bool = True,
    faithfulness_md: str = "",
) -> Path:
    """Write ``out_dir/index.html`` (to a temporary name, then renamed) from ``out_dir/selection.md``,
    ``figures`` and, with ``validation_samples``, each run's synthetic validation figure; returns its
    path."""
    page = report_html(
        runs, table, root, out_dir, (out_dir / "selection.md").read_text(), figures, validation_samples,
        faithfulness_md,
    )
    path = out_dir / "index.html"
    write_text_atomic(path, page)
    return path
