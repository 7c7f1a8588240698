"""A real two-category sweep, its report, and the report's index.html in headless Chromium."""

from __future__ import annotations

import csv
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.browser import chromium_or_skip, open_page
from tests.conftest import run_cli, tiny_overrides

CATEGORIES = ("brick", "grass")


@pytest.mark.slow
def test_real_sweep_report_page_renders_every_category_without_errors(tmp_path: Path) -> None:
    chromium_or_skip()  # before minutes of training
    sweep_dir = tmp_path / "sweep"
    train = ["-m", f"category={','.join(CATEGORIES)}", *tiny_overrides(), f"hydra.sweep.dir={sweep_dir}"]
    result = run_cli(train, cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(
        [str(sweep_dir), "--rows", "category", "--cols", "model"],
        cwd=tmp_path,
        module="anomaly_attn.report",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = sweep_dir / "report"
    with (report / "table.csv").open() as handle:
        expected = list(csv.reader(handle))
    with open_page(report / "index.html", width=1400) as (page, problems):
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400, "no sideways page scroll"
        for section in ("overview", "metric", "selection", "figures", "validation-samples", "runs"):
            assert page.locator(f"#{section}").is_visible(), section
        rows = page.locator("#metric-table tbody tr")
        shown = [rows.nth(i).locator("th, td").all_inner_texts() for i in range(rows.count())]
        assert shown[:-1] == expected[1:], "the metric table's rows and values, as in table.csv"
        for category in CATEGORIES:
            row = rows.filter(has=page.get_by_role("rowheader", name=category, exact=True))
            assert row.is_visible(), category
        assert page.locator("figure.validation-samples img").count() == len(CATEGORIES)
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) >= 5 and all(images), "qualitative, ROC, per-defect, grid, validation samples"
        hrefs = page.evaluate("[...document.links].map(a => a.getAttribute('href'))")
    assert problems.all() == [], problems
    # Relative links (job names hold '=' and ','), each reaching a run directory of this sweep.
    assert all(not h.startswith(("/", "file:", "http")) for h in hrefs)
    linked = {(report / unquote(h)).resolve() for h in hrefs if h.endswith("/")}
    run_dirs = {p.parent.resolve() for p in sweep_dir.glob("*/metrics.json")}
    assert len(run_dirs) == len(CATEGORIES) and linked == run_dirs
