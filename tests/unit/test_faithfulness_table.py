"""The report's faithfulness table (report/faithfulness.md and its HTML section) from runs' metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from anomaly_attn.reporting.sweep_report import build_report


def entry(label: str, deletion: float, versus_random: tuple[float, float, float], verdict: str,
          spearman: float) -> dict:
    low, mean, high = versus_random
    return {
        "label": label, "deletion_auc": deletion, "insertion_auc": 0.9,
        "deletion_vs_random": {"mean": mean, "low": low, "high": high},
        "deletion_vs_residual_l2": {"mean": 0.1, "low": 0.05, "high": 0.15},
        "randomization": {"layers_randomized": [5, 10], "layers": 10, "spearman": [0.9, spearman],
                          "ssim": [0.8, 0.3], "verdict": verdict},
    }


def write_run(folder: Path, category: str, seed: int, faithfulness: bool = True) -> None:
    folder.mkdir(parents=True)
    metrics = {"dataset": "textures", "category": category, "model": "conv_ae", "pixel_auroc": 0.9,
               "seed": seed}
    if faithfulness:
        metrics["faithfulness"] = {
            "n_images": 16,
            "maps": {
                "selected": entry("layercam@encoder.2[residual]", 0.40, (-0.7, -0.6, -0.5), "changes", 0.1),
                "residual_l2": entry("residual_l2", 0.25, (-0.8, -0.75, -0.7), "changes", 0.2),
                "image_highpass": entry("image_highpass", 0.7, (-0.4 + seed, -0.2 + seed, 0.1 + seed),
                                        "model-independent", 1.0),
            },
            "random": {"deletion_auc": 1.0, "insertion_auc": 0.8},
        }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "config.yaml").write_text(json.dumps({"category": category, "seed": seed}))


def test_the_table_aggregates_runs_per_map_and_counts_intervals_that_exclude_zero(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "brick", 0)
    write_run(tmp_path / "b", "grass", 1)
    out = build_report(tmp_path, "category", "model", "pixel_auroc", figures=False)
    table = (out / "faithfulness.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows)[1:] == ["selected (layercam@encoder.2[residual])", "residual_l2", "image_highpass",
                              "random map"]
    selected = rows["selected (layercam@encoder.2[residual])"].split(" | ")
    assert selected[1:5] == ["2", "0.400 ± 0.000", "-0.600 (excl. 0: 2/2)", "+0.100 (excl. 0: 2/2)"]
    assert selected[6] == "0.100 ± 0.000" and selected[8].startswith("changes 2")
    # The high pass's intervals: [-0.4, 0.1] holds 0, the second seed's [0.6, 1.1] does not.
    highpass = rows["image_highpass"]
    assert "+0.300 (excl. 0: 1/2)" in highpass and "model-independent 2" in highpass
    assert "| – |" in rows["residual_l2"]  # the residual is not compared with itself
    assert "never used to choose" in table
    page = (out / "index.html").read_text()
    assert 'id="faithfulness"' in page and "layercam@<wbr>encoder.2[residual]" in page


def test_no_table_without_faithfulness_blocks(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "brick", 0, faithfulness=False)
    out = build_report(tmp_path, "category", "model", "pixel_auroc", figures=False)
    assert not (out / "faithfulness.md").exists()
    assert 'id="faithfulness"' not in (out / "index.html").read_text()
