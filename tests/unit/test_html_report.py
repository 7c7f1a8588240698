"""report/index.html: one self-contained page whose tables equal the Markdown ones, whose images are the
report's figures, whose links reach every run directory, whose text is escaped, and which a real
headless browser renders without an error."""

from __future__ import annotations

import base64
import csv
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from anomaly_attn.common.atomic import write_json_atomic
from anomaly_attn.data.synthetic_validation import build_synthetic_validation
from anomaly_attn.metrics import aupro, image_auroc, pixel_auroc
from anomaly_attn.reporting.figures import save_grid, save_samples, save_samples_figure
from anomaly_attn.reporting.html import markdown_to_html
from anomaly_attn.reporting.sweep_report import build_report
from anomaly_attn.run.store import write_per_image_scores, write_run_config
from tests.browser import open_page
from tests.conftest import compose_cfg, tiny_overrides

# A category name as a folder dataset could have it: the page must show it, not interpret it.
HOSTILE = 'm<i>x&"y'
CATEGORIES = ("brick", "grass", HOSTILE)
LAYERS = ("encoder.14", "encoder.2")
ERROR = 'RuntimeError: <script>alert("boom")</script> CUDA out of memory & more'
# Hydra names a sweep's job directories by all of its overrides: long, and without a space to wrap at.
JOB = (
    ",+tag=a+b,dataset.batch_size=16,dataset.crop_size=32,dataset.image_size=64,dataset.n_test_good=4,"
    "dataset.n_test_per_defect=2,dataset.n_train=48,trainer.max_epochs=1"
)


def write_run(
    run_dir: Path, cfg, category: str, layer: str, rng: np.random.Generator, samples_png: Path
) -> None:
    """A complete run directory written by the framework's own writers, with metrics computed by its
    own metric functions on random maps."""
    run_dir.mkdir(parents=True)
    cfg.category, cfg.layer = category, layer
    write_run_config(cfg, run_dir)
    labels = np.r_[np.zeros(6, int), np.ones(6, int)]
    masks = np.zeros((12, 1, 16, 16), np.float32)
    masks[6:, 0, 4:9, 4:9] = 1
    maps = (rng.random((12, 1, 16, 16)) + rng.uniform(0.1, 0.6) * masks).astype(np.float32)
    scores = maps.reshape(12, -1).max(axis=1)
    residual = rng.random(12) + 0.5 * labels
    defects = ["good"] * 6 + ["crack"] * 3 + ["hole"] * 3
    per_defect = {
        d: {
            "image_auroc": image_auroc(
                scores[(labels == 0) | (np.array(defects) == d)],
                labels[(labels == 0) | (np.array(defects) == d)],
            ),
            "pixel_auroc": float(rng.uniform(0.5, 1)),
        }
        for d in ("crack", "hole")
    }
    metrics = {
        "pixel_auroc": pixel_auroc(maps, masks),
        "pixel_aupro": aupro(maps, masks),
        "image_auroc": image_auroc(scores, labels),
        "validation": {"pixel_auroc": float(rng.uniform(0.5, 1)), "pixel_aupro": float(rng.uniform(0, 1))},
        "dataset": "textures",
        "category": category,
        "model": "conv_ae",
        "layer": layer,
        "selected_map": f"gradcam_abs@{layer}",
        "image_score": "max",
        "attention": "seed",
        "loss": "mse",
        "seed": 0,
        "experiment": "unit_html",
        "per_defect": per_defect,
        "controls": {
            "residual_l2": {
                "pixel_auroc": float(rng.uniform(0.5, 1)),
                "image_auroc": image_auroc(residual, labels),
            }
        },
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_per_image_scores(
        run_dir / "per_image_scores.csv",
        [
            {
                "path": f"{i}.png",
                "defect_type": defects[i],
                "label": int(labels[i]),
                "score_attention": float(scores[i]),
                "score_residual_l2": float(residual[i]),
            }
            for i in range(12)
        ],
    )
    samples = [
        {
            "image": np.repeat(maps[i], 3, axis=0) * 0.5,
            "mask": masks[i, 0],
            "map": maps[i, 0],
            "label": int(labels[i]),
            "defect_type": defects[i],
            "score": float(scores[i]),
        }
        for i in (0, 6, 9)
    ]
    (run_dir / "figures").mkdir()
    save_samples(samples, run_dir / "figures" / "samples.npz", threshold=0.8)
    save_grid(samples, run_dir / "figures" / "grid.png")
    shutil.copyfile(samples_png, run_dir / "figures" / "validation_samples.png")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A category x layer sweep (names with '=', ',', '+', '<', '&'), one failed and one unfinished job,
    and its report."""
    root = tmp_path_factory.mktemp("sweep")
    cfg = compose_cfg(tiny_overrides())
    OmegaConf.set_struct(cfg, False)
    rng = np.random.default_rng(0)
    for index, category in enumerate(CATEGORIES):
        # One synthetic validation set per category, shared by its layers (same data, same seed).
        images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(index))
        synthetic = build_synthetic_validation(images[:4], images[4:], ["cutpaste", "shapes"], seed=index)
        samples_png = save_samples_figure(synthetic, root / f"validation_{index}.png", count=2)
        for layer in LAYERS:
            write_run(
                root / f"category={category},layer={layer}{JOB}", cfg, category, layer, rng, samples_png
            )
        (root / f"validation_{index}.png").unlink()
    failed = root / f"category=gravel,layer=encoder.14{JOB}"
    failed.mkdir()
    cfg.category, cfg.layer = "gravel", "encoder.14"
    write_run_config(cfg, failed)
    (failed / "error.txt").write_text(ERROR + "\nTraceback ...\n")
    unfinished = root / f"category=wood,layer=encoder.14{JOB}"
    unfinished.mkdir()
    cfg.category = "wood"  # layer: encoder.14 as above
    write_run_config(cfg, unfinished)
    return build_report(root, rows="category", cols="layer", metric="pixel_auroc")


class Elements(HTMLParser):
    """Tables (id -> rows of cell texts), image sources, hrefs and tag names of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str | None, list[list[str]]]] = []
        self.images: list[str] = []
        self.hrefs: list[str] = []
        self.tags: set[str] = set()
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.tags.add(tag)
        if tag == "table":
            self.tables.append((values.get("id"), []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(values["src"] or "")
        elif tag == "a":
            self.hrefs.append(values["href"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(page: Path) -> Elements:
    elements = Elements()
    elements.feed(page.read_text(encoding="utf-8"))
    return elements


def markdown_cells(markdown: str) -> list[list[str]]:
    rows = [line.strip()[1:-1].split("|") for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip().replace("**", "") for cell in row] for row in rows if not row[0].startswith("---")]


def test_html_tables_equal_the_markdown_and_csv_tables(report: Path) -> None:
    tables = dict(parse(report / "index.html").tables)
    with (report / "table.csv").open() as handle:
        expected = list(csv.reader(handle))
    metric_rows = tables["metric-table"]
    assert (
        metric_rows[0] == ["category \\ layer", *LAYERS] == [f"{expected[0][0]} \\ layer", *expected[0][1:]]
    )
    assert metric_rows[1:-1] == expected[1:], "same rows, columns and 3-decimal values as table.csv"
    assert sorted(row[0] for row in metric_rows[1:-1]) == sorted(CATEGORIES)
    assert metric_rows[-1] == markdown_cells((report / "table.md").read_text())[-1], "the mean row"
    selection = markdown_cells((report / "selection.md").read_text())
    assert len(selection) == 1 + 2 * len(CATEGORIES) + 1
    assert [rows for rows in tables.values() if rows == selection], "selection.md's table, cell for cell"


def test_html_is_self_contained_and_links_every_run_directory(report: Path) -> None:
    page = (report / "index.html").read_text(encoding="utf-8")
    elements = parse(report / "index.html")
    assert not elements.tags & {"script", "link", "iframe", "object", "embed"}
    assert "http://" not in page and "https://" not in page and "url(" not in page
    embedded = [base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in elements.images]
    assert all(src.startswith("data:image/png;base64,") for src in elements.images)
    figures = [
        "qualitative_encoder.14.png",
        "qualitative_encoder.2.png",
        "roc.png",
        "per_defect.png",
        "grid.png",
    ]
    assert embedded[: len(figures)] == [(report / name).read_bytes() for name in figures]
    run_dirs = {p for p in report.parent.iterdir() if p.is_dir() and p.name != "report"}
    validation_pngs = {
        (p / "figures" / "validation_samples.png").read_bytes()
        for p in run_dirs
        if (p / "figures" / "validation_samples.png").exists()
    }
    assert len(validation_pngs) == len(CATEGORIES), "one synthetic-validation figure per category"
    assert sorted(embedded[len(figures) :]) == sorted(validation_pngs), "each distinct figure once"
    targets = {(report / unquote(href)).resolve() for href in elements.hrefs}
    assert all(target.exists() for target in targets), "every relative link reaches a file or folder"
    assert {t for t in targets if t.is_dir()} == {p.resolve() for p in run_dirs}


def test_html_escapes_names_and_errors_and_marks_unfinished_runs(report: Path) -> None:
    html5lib = pytest.importorskip("html5lib", reason="HTML5 parse check needs `pip install html5lib`")
    page = (report / "index.html").read_text(encoding="utf-8")
    html5lib.HTMLParser(strict=True).parse(page)  # raises on any HTML5 parse error
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;boom&quot;)&lt;/script&gt;" in page
    assert "m&lt;i&gt;x&amp;&quot;y" in page and HOSTILE not in page
    runs = dict(parse(report / "index.html").tables)["runs-table"]
    by_status = {row[0]: row for row in runs[1:] if row[0] != "COMPLETE"}
    assert by_status["FAILED"][1] == f"category=gravel,layer=encoder.14{JOB}"
    assert by_status["FAILED"][3:7] == ["gravel", "conv_ae", "–", "encoder.14"], "from its config.yaml"
    assert ERROR in by_status["FAILED"][-1]
    assert by_status["INCOMPLETE"][3] == "wood" and "no metrics.json" in by_status["INCOMPLETE"][-1]
    assert 'id="failed-runs"' in page


def test_markdown_to_html_keeps_cells_bold_and_lists() -> None:
    html = markdown_to_html("| a | b |\n|---|---|\n| **mean** | 0.5 |\n\nnote <x>\n- one\n- two\n")
    assert '<tr class="mean"><td class="text"><strong>mean</strong></td><td>0.5</td></tr>' in html
    assert "<p>note &lt;x&gt;</p>" in html and "<ul><li>one</li><li>two</li></ul>" in html


def test_no_figures_report_page_has_tables_and_no_images(report: Path, tmp_path: Path) -> None:
    out_dir = build_report(report.parent, out_dir=tmp_path / "tables_only", figures=False)
    elements = parse(out_dir / "index.html")
    assert not elements.images
    assert {"metric-table", "runs-table"} <= {name for name, _ in elements.tables}


def test_html_renders_in_headless_chromium_without_errors(report: Path) -> None:
    with open_page(report / "index.html") as (page, problems):
        for category in CATEGORIES:
            row = page.locator("#metric-table tbody tr").filter(
                has=page.get_by_role("rowheader", name=category, exact=True)
            )
            assert row.count() == 1 and row.is_visible(), category
        images = page.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images), "every image decoded"
        assert page.locator("#failed-runs").is_visible()
        assert ERROR in page.locator("#failed-runs").inner_text()
        assert page.evaluate("document.scripts.length") == 0
        assert page.evaluate("document.compatMode") == "CSS1Compat", "standards mode (the doctype)"
    assert problems.all() == [], problems


SECTIONS = ("overview", "failed-runs", "metric", "selection", "figures", "validation-samples", "runs")


def test_html_fits_a_1400_px_window_with_every_section(report: Path) -> None:
    """At 1400 px the page never scrolls sideways: wide tables wrap their long labels or scroll inside
    their own box; figures shrink to the page; the ROC figure stays large enough to read."""
    with open_page(report / "index.html", width=1400) as (page, problems):
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400
        for section in SECTIONS:
            assert page.locator(f"#{section}").is_visible(), section
        headings = page.locator("h2").all_inner_texts()
        assert headings == [
            "Runs without results (2)",
            "pixel_auroc by category and layer",
            "Selected maps: validation and test side by side",
            "Figures",
            "Synthetic validation samples",
            "Runs",
        ]
        boxes = page.evaluate(
            "[...document.querySelectorAll('div.scroll')].map(d => [d.getBoundingClientRect().right, "
            "d.scrollWidth - d.clientWidth, d.querySelector('table').id])"
        )
        assert len(boxes) == 3 and max(right for right, _, _ in boxes) <= 1400, "table boxes in the window"
        # The widest (the 17 columns of the selection table) wraps its labels instead of hiding columns.
        assert [hidden for _, hidden, _ in boxes] == [0, 0, 0], boxes
        shown = page.evaluate(
            "Object.fromEntries([...document.images].map(i => [i.alt, i.getBoundingClientRect().right]))"
        )
        assert max(shown.values()) <= 1400
        roc_width = page.evaluate("document.querySelector('#figure-roc img').getBoundingClientRect().width")
        assert roc_width >= 800
    assert problems.all() == [], problems
