"""The decoded-image cache benchmark runs on tiny sizes (the real sizes run in `make bench`)."""

from __future__ import annotations

import pytest

from benchmarks import bench_cache, run_all


def test_cache_load_rows_run_on_a_tiny_category_and_render() -> None:
    rows = bench_cache.run(
        size=96, n_train=4, n_test_good=1, n_defect=2, image_size=64, repeats=1, sweep_jobs=0
    )
    assert [row["target"] for row in rows] == ["<= 0.1", "documented"]
    for row in rows:
        assert row["ours"] > 0 and row["reference_value"] > 0
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"])
    assert "7 PNGs of 96² RGB" in rows[0]["benchmark"]
    assert run_all.render(rows, ["- machine"], elapsed_s=1.0).count("\n| ") == len(rows) + 1


@pytest.mark.slow
def test_a_two_job_sweep_decodes_the_category_once() -> None:
    rows = bench_cache.run(
        size=96, n_train=8, n_test_good=1, n_defect=2, image_size=64, repeats=1, sweep_jobs=2
    )
    sweep = rows[-1]
    assert sweep["reference_value"] == 11 and sweep["ours"] == 11 and sweep["passed"] is True
