"""The lines a job ends with: each metric with its bootstrap interval and the paired difference."""

from __future__ import annotations

from anomaly_attn.cli.summary import run_summary

METRICS = {
    "dataset": "textures", "category": "brick", "model": "conv_ae", "selected_map": "residual_ssim σ1",
    "image_auroc": 0.9, "pixel_auroc": 0.95, "pixel_aupro": 0.8,
    "controls": {"residual_l2": {"image_auroc": 0.85, "pixel_auroc": 0.90, "pixel_aupro": 0.7}},
}


def interval(low: float, high: float) -> dict[str, float]:
    return {"low": low, "high": high, "std": 0.01}


def test_the_summary_gives_intervals_and_says_which_differences_exclude_zero() -> None:
    metrics = {
        **METRICS,
        "intervals": {
            "level": 0.95,
            "maps": {"selected": {"pixel_auroc": interval(0.93, 0.97)},
                     "residual_l2": {"pixel_auroc": interval(0.88, 0.92)}},
            "paired": {"selected - residual_l2": {"pixel_auroc": interval(0.03, 0.07),
                                                  "image_auroc": interval(-0.02, 0.12)}},
        },
    }
    text = run_summary(metrics, "/runs/x")
    assert "pixel AUROC    0.950 [0.930, 0.970]   (residual_l2 0.900 [0.880, 0.920])" in text
    assert "selected - residual_l2 (paired, 95% bootstrap interval over test images):" in text
    assert "pixel AUROC  +0.050 [0.030, 0.070]  interval excludes 0" in text
    assert "image AUROC  +0.050 [-0.020, 0.120]  no difference shown" in text


def test_a_run_without_intervals_keeps_the_plain_summary() -> None:
    text = run_summary(METRICS, "/runs/x")
    assert "pixel AUROC    0.950   (residual_l2 0.900)" in text and "[" not in text and "paired" not in text


def test_the_selection_table_marks_differences_whose_interval_excludes_zero(tmp_path) -> None:
    from anomaly_attn.reporting.runs import Run
    from anomaly_attn.reporting.tables import PAIRED_HEADER, paired_cell, selection_markdown

    def run(name: str, low: float, high: float) -> Run:
        paired = {"selected - residual_l2": {"pixel_auroc": interval(low, high)}}
        metrics = {**METRICS, "category": name, "intervals": {"paired": paired}}
        (tmp_path / name).mkdir()
        return Run(tmp_path / name, metrics)

    real, unclear = run("brick", 0.03, 0.07), run("grass", -0.01, 0.11)
    assert paired_cell(real) == "+0.050 [+0.030, +0.070]*" and paired_cell(unclear).endswith("]")
    assert paired_cell(Run(tmp_path, dict(METRICS))) == "–"
    table = selection_markdown([real, unclear])
    assert PAIRED_HEADER in table and "1 of 2 exclude 0" in table
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert {line.count("|") for line in rows} == {rows[0].count("|")}  # every row has the header's cells
    assert rows[2].endswith("| +0.050 [+0.030, +0.070]* |")
    assert "* where the interval excludes 0" in table
