"""The footnote under every table: metric definitions, the intervals' bootstrap, version and commit."""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_attn.reporting.sweep_report import build_report


def write_run(folder: Path, category: str, commit: str, intervals: bool = True, n_test: int = 40) -> None:
    folder.mkdir(parents=True)
    metrics = {
        "dataset": "textures", "category": category, "model": "conv_ae", "pixel_auroc": 0.9, "n_test": n_test,
        "provenance": {"version": "0.2.0", "git_commit": commit, "git_dirty": False},
    }
    if intervals:
        metrics["intervals"] = {"resamples": 1000, "level": 0.95, "seed": 0}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = {"category": category, "dataset": {"name": "textures", "image_size": 64},
              "evaluation": {"fpr_limit": 0.3}, "seed": 0}
    (folder / "config.yaml").write_text(json.dumps(config))  # JSON is YAML


def test_tables_and_page_carry_definitions_bootstrap_version_and_commit(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "brick", "a" * 40)
    write_run(tmp_path / "b", "grass", "b" * 40)
    out = build_report(tmp_path, "category", "model", "pixel_auroc", figures=False)
    expected = (
        "Provenance: pixel metrics exact (sort-based) on maps at 64 px; AUPRO up to FPR 0.3, normalised by "
        "it; intervals: stratified bootstrap over test images, B = 1000, level 0.95, seed 0; anomaly_attn "
        "0.2.0, commit aaaaaaaaaa / bbbbbbbbbb; 2 complete run(s)."
    )
    assert expected in (out / "table.md").read_text()
    tex = (out / "table.tex").read_text()
    assert r"\footnotesize Provenance: pixel metrics exact" in tex and "B = 1000" in tex
    assert "Provenance: pixel metrics exact (sort-based)" in (out / "index.html").read_text()


def test_the_footnote_says_when_intervals_are_missing_or_metrics_were_bounded(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "brick", "c" * 40, intervals=False, n_test=5000)
    out = build_report(tmp_path, "category", "model", "pixel_auroc", figures=False)
    text = (out / "table.md").read_text()
    assert "intervals: none recorded" in text
    assert "exact, except 1 run(s) over 2^24 test pixels: bounded" in text
