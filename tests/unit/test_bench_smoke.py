"""The benchmark code runs on tiny sizes and renders its table (the real sizes run in `make bench`)."""

from __future__ import annotations

import math

import pytest

from benchmarks import bench_layers, bench_metrics, bench_test_step, bench_train, run_all

ROW_KEYS = {"benchmark", "ours", "unit", "reference", "reference_value", "ratio", "target", "passed"}


def test_metric_and_test_map_benchmarks_run_on_tiny_sizes_and_render() -> None:
    rows = bench_metrics.run(n_maps=4, size=32, repeats=1)
    rows += bench_test_step.run(image_size=64, batch_size=2, repeats=1)
    rows += bench_layers.run(sizes=((64, 1),), batch_size=2, repeats=1)
    assert len(rows) == 11
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["ours"] > 0 and row["reference_value"] > 0
        assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"])
    kept_memory, cells_memory = rows[5], rows[6]
    assert kept_memory["unit"] == cells_memory["unit"] == "MB"
    assert cells_memory["ours"] > 30  # the cells are allocated whole: 2^20 of 33 bytes
    assert "27 spatial layers × 4 variants" in rows[9]["benchmark"] and rows[9]["target"] == "documented"
    assert "selection's maps: all 27 spatial layers" in rows[10]["benchmark"] and rows[10]["target"] == "<= 3"
    text = run_all.render(rows, ["- machine line"], elapsed_s=1.0)
    assert text.count("\n| ") == len(rows) + 1  # header + one line per row (the separator starts "|-")
    assert "- machine line" in text and "make bench" in text


@pytest.mark.slow
def test_training_benchmark_runs_on_a_tiny_job() -> None:
    rows = bench_train.run(n_train=20, image_size=64, batch_size=8)
    assert rows[0]["ratio"] > 0 and not math.isnan(rows[0]["ratio"])
    assert [row["target"] for row in rows[-3:]] == ["documented"] * 3


def test_library_benchmark_compares_like_for_like_on_tiny_sizes() -> None:
    from benchmarks import bench_library

    (row,) = bench_library.run(batch=2, size=40)  # asserts both blurs agree to 1e-5 before timing
    assert set(row) == ROW_KEYS and row["ours"] > 0 and row["reference_value"] > 0
    assert row["ratio"] == pytest.approx(row["ours"] / row["reference_value"])


def test_research_comparison_rows_run_on_tiny_sizes() -> None:
    gradcam, layouts = bench_test_step.run_research_comparison(
        image_size=64, channels=3, batch_size=2, repeats=1
    )
    assert set(gradcam) == ROW_KEYS and gradcam["reference_value"] == 6.6
    assert gradcam["ratio"] == pytest.approx(gradcam["ours"] / 6.6) and gradcam["target"] == ">= 5"
    assert "2×3×64²" in gradcam["benchmark"] and "channels_last" in gradcam["benchmark"]  # as shipped
    assert layouts["ours"] == gradcam["ours"] and layouts["ratio"] == pytest.approx(
        layouts["ours"] / layouts["reference_value"]
    )


def test_machine_description_says_there_are_no_gpu_rows_without_a_gpu(monkeypatch) -> None:
    monkeypatch.setattr(run_all.torch.cuda, "is_available", lambda: False)
    lines = run_all.machine_description((0.0, 0.0, 0.0))
    assert any("no GPU rows" in line for line in lines)
    assert any("float32 by default" in line and "cpu_bf16=true" in line for line in lines)


@pytest.mark.parametrize("native", [True, False])
def test_quality_rows_name_the_cpu_and_measure_bf16_only_where_native(monkeypatch, native: bool) -> None:
    from benchmarks import bench_quality

    monkeypatch.setattr(bench_quality, "native_cpu_bf16", lambda: native)
    monkeypatch.setattr(bench_quality, "cpu_model", lambda: "Test CPU 9000")
    jobs = []

    def fake_quality(overrides: list[str]) -> dict:  # no training: the loss is worse with bf16
        jobs.append(overrides)
        bf16 = "trainer.cpu_bf16=true" in overrides
        return {"val_loss": 0.02 if bf16 else 0.01, "objective": "mean_auroc_aupro", "validation": 0.8,
                "selected_map": "mean_abs_cam@encoder.16[residual]", "settings": "channels_last, float32"}

    monkeypatch.setattr(bench_quality, "quality", fake_quality)
    rows = bench_quality.run(max_epochs=1)
    assert len(rows) == 4 and all(set(row) == ROW_KEYS for row in rows)
    native_text = "native bf16" if native else "no native bf16"
    assert all(f"on Test CPU 9000, {native_text}" in row["benchmark"] for row in rows)
    assert [row["passed"] for row in rows[:2]] == [True, True]
    assert len(jobs) == (3 if native else 2)
    table = run_all.markdown_table(rows).splitlines()
    if native:
        assert rows[2]["ratio"] == pytest.approx(2.0) and rows[2]["passed"] is False
        assert table[-2].endswith("| FAIL |")
    else:
        assert [row["passed"] for row in rows[2:]] == [None, None]
        assert all(line.endswith("| not measured |") for line in table[-2:])
        assert all("not measured" in row["benchmark"] for row in rows[2:])


@pytest.mark.slow
def test_training_research_comparison_runs_on_a_tiny_job() -> None:
    research, bare = bench_train.run_research_comparison(image_size=64, channels=3, batch_size=4, steps=1)
    assert research["reference_value"] == 13.0 and research["target"] == ">= 3"
    assert "4×3×64²" in research["benchmark"] and "(4 images" in research["benchmark"]
    assert bare["ratio"] == pytest.approx(bare["ours"] / bare["reference_value"]) and bare["ratio"] > 0


@pytest.mark.slow
def test_quality_rows_compare_the_same_job_with_and_without_the_speed_options() -> None:
    from benchmarks import bench_quality

    tiny = ("dataset.n_train=48", "dataset.n_test_good=4", "dataset.n_test_per_defect=2")
    rows = bench_quality.run(max_epochs=1, extra=tiny)
    assert len(rows) == 4  # as shipped, then bf16 asked for (measured only where bf16 is native)
    loss, validation = rows[:2]
    assert set(loss) == ROW_KEYS and set(validation) == ROW_KEYS
    assert 0 < loss["ours"] < 1 and 0 < loss["reference_value"] < 1
    assert loss["ratio"] == pytest.approx(loss["ours"] / loss["reference_value"])
    assert "contiguous, float32" in loss["reference"] and "channels_last" in loss["benchmark"]
    assert 0 <= validation["ours"] <= 1 and 0 <= validation["reference_value"] <= 1
    assert validation["passed"] == (validation["ours"] - validation["reference_value"] >= -0.02)


@pytest.mark.slow
def test_faithfulness_benchmark_runs_on_tiny_sizes() -> None:
    from benchmarks import bench_faithfulness

    (row,) = bench_faithfulness.run(size=64, n_images=2, repeats=1)
    assert set(row) == ROW_KEYS and row["ours"] > 0 and row["reference_value"] > 0
    assert "7 maps on 2 images of 64²" in row["benchmark"] and row["target"] == "documented"


def test_feature_memory_benchmark_runs_on_tiny_sizes_and_replaces_its_rows_in_place(tmp_path) -> None:
    from benchmarks import bench_feature_memory

    rows = bench_feature_memory.run(n_train=6, image_size=64, batch_size=2, patches=64, repeats=1)
    assert [set(row) for row in rows] == [ROW_KEYS] * 3
    size = rows[1]
    assert size["unit"] == "MB" and size["passed"] and size["ratio"] <= 1
    # 64 patches per layer at 4 layers of 32, 32, 32, 64 channels (encoder.2/5/11/17 at 64²).
    assert size["ours"] == pytest.approx(64 * (32 + 32 + 32 + 64) * 4 / 1e6)
    # With max_distances 32·1024 the 32×32 layer (encoder.2) keeps 32 patches; the bound follows.
    bounded = bench_feature_memory.run(n_train=6, image_size=64, batch_size=2, patches=64, repeats=1,
                                       max_distances=32 * 1024)[1]
    assert bounded["ours"] == pytest.approx((32 * 32 + 64 * (32 + 32 + 64)) * 4 / 1e6) and bounded["passed"]
    old = run_all.render([{**rows[0], "ours": 99.0}, *rows[1:2]], ["- old machine"], elapsed_s=5.0)
    text = run_all.replace_rows(old, rows, "Rows of feature-memory: re-measured by X.")
    assert text.count("\n| ") == len(rows) + 1  # row 0 replaced, row 1 replaced, row 2 appended
    assert "99.0000 s" not in text and rows[2]["benchmark"] in text
    assert "- old machine" in text and "Rows of feature-memory: re-measured by X." in text
    again = run_all.replace_rows(text, rows, "Rows of feature-memory: re-measured by Y.")
    assert "by X." not in again and again.count("\n| ") == len(rows) + 1
