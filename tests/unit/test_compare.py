"""``report --compare``: runs paired by (category, seed) on the same test images, per-category bootstrap
intervals of A − B pooled over seeds, a Wilcoxon test across categories; interval_parts.npz round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_attn.cli.report import main
from anomaly_attn.metrics import interval_inputs as interval_module
from anomaly_attn.metrics.interval_inputs import (
    IntervalInputs,
    IntervalSettings,
    collect_intervals,
    load_parts,
)
from anomaly_attn.metrics.intervals import image_metric_samples, pixel_metric_samples, resample_weights
from anomaly_attn.reporting.compare import compare_runs, holm, to_markdown
from anomaly_attn.reporting.runs import find_runs
from tests.unit.test_seed_aggregation import write_seed_run

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")
RESAMPLES = 100


def synthetic_inputs(category: str, seed: int, strength: float, images: int = 16, size: int = 24,
                     prefix: str = "") -> IntervalInputs:
    """Half the images carry a square defect; ``selected`` sees it with ``strength``, ``residual_l2``
    hardly at all. The noise depends on (category, seed) only, so equal strengths give equal maps."""
    inputs = IntervalInputs(["selected", "residual_l2"], IntervalSettings(resamples=RESAMPLES, seed=3))
    generator = torch.Generator().manual_seed(sum(map(ord, category)) * 100 + seed)
    labels = torch.tensor([i % 2 for i in range(images)])
    masks = torch.zeros(images, 1, size, size)
    masks[labels == 1, :, 6:12, 6:12] = 1.0
    noise = torch.rand(images, 1, size, size, generator=generator)
    maps = {"selected": noise + strength * masks, "residual_l2": noise + 0.02 * masks * noise}
    scores = {name: value.amax(dim=(1, 2, 3)) for name, value in maps.items()}
    paths = [f"{prefix}{category}/{i:03d}.png" for i in range(images)]
    inputs.update(maps, masks, scores, labels, torch.ones(images, dtype=torch.bool), paths=paths)
    return inputs


def unit_metrics(inputs: IntervalInputs, name: str) -> dict[str, float]:
    """The map's exact metrics (unit weights), as metrics.json would hold them."""
    ones = np.ones((1, len(inputs.labels)))
    values = image_metric_samples(np.asarray(inputs.scores[name]), np.asarray(inputs.labels), ones)
    values.update(pixel_metric_samples(inputs.pixel_parts(name), ones))
    return {metric: float(values[metric][0]) for metric in METRICS}


def write_compare_run(root: Path, category: str, seed: int, loss: str, strength: float,
                      prefix: str = "", **config) -> Path:
    """A complete run below ``root/loss=LOSS`` with an intervals block and interval_parts.npz."""
    rng = np.random.default_rng(seed)
    metrics = write_seed_run(root / f"loss={loss}", category, seed, rng, loss__name=loss, **config)
    run_dir = root / f"loss={loss}" / f"category={category},seed={seed}"
    inputs = synthetic_inputs(category, seed, strength, prefix=prefix)
    inputs.save_parts(run_dir / "interval_parts.npz")
    metrics.update(unit_metrics(inputs, "selected"), loss=loss)
    metrics["controls"]["residual_l2"].update(unit_metrics(inputs, "residual_l2"))
    metrics["intervals"] = {"resamples": RESAMPLES, "seed": 3, "level": 0.95, "map_side": 256}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def write_sweep(root: Path, strengths: dict[str, float], categories=("brick", "grass"), seeds=(0, 1)) -> None:
    for category in categories:
        for seed in seeds:
            for loss, strength in strengths.items():
                write_compare_run(root, category, seed, loss, strength)


def test_save_parts_round_trips_and_builds_the_pixel_parts_once(tmp_path: Path, monkeypatch) -> None:
    built = []
    from_maps = interval_module.PixelParts.from_maps
    monkeypatch.setattr(interval_module.PixelParts, "from_maps",
                        lambda *a, **k: built.append(1) or from_maps(*a, **k))
    inputs = synthetic_inputs("brick", 0, 2.0)
    block = collect_intervals(inputs)
    inputs.save_parts(tmp_path / "interval_parts.npz")
    assert len(built) == 2, "one PixelParts per map, shared by intervals() and save_parts()"
    loaded = load_parts(tmp_path / "interval_parts.npz")
    assert loaded["paths"] == [f"brick/{i:03d}.png" for i in range(16)]
    assert loaded["labels"].tolist() == inputs.labels and loaded["with_mask"].all()
    assert loaded["scores"]["selected"].tolist() == inputs.scores["selected"]
    parts = loaded["parts"]["selected"]
    assert np.array_equal(parts.pairs, inputs.pixel_parts("selected").pairs)
    assert parts.pairs.dtype == np.float64
    weights = resample_weights(loaded["labels"], RESAMPLES, 3)
    samples = pixel_metric_samples(parts, weights)
    original = pixel_metric_samples(inputs.pixel_parts("selected"), weights)
    for metric in ("pixel_auroc", "pixel_aupro"):
        np.testing.assert_allclose(samples[metric], original[metric], atol=1e-6)
    assert block["maps"]["selected"]["pixel_auroc"]["low"] == pytest.approx(
        np.quantile(original["pixel_auroc"], 0.025))


def test_a_planted_difference_is_found_and_marked(tmp_path: Path) -> None:
    write_sweep(tmp_path, {"mse": 2.0, "ssim": 0.0})
    comparison = compare_runs(find_runs(tmp_path), "loss.name=mse", "loss.name=ssim")
    assert [row.category for row in comparison.categories] == ["brick", "grass"]
    for row in comparison.categories:
        assert row.seeds == [0, 1]
        for metric in ("image_auroc", "pixel_auroc"):
            point, low, high = row.difference[metric]
            assert low > 0 and row.excludes_zero(metric), (row.category, metric, row.difference[metric])
            assert point == pytest.approx(row.a[metric] - row.b[metric])
    markdown = to_markdown(comparison)
    assert "| brick | 2 |" in markdown and "] * |" in markdown
    assert "n/a: fewer than 6 categories, read the per-category intervals" in markdown
    assert f"B = {RESAMPLES} resamples" in markdown and "pooled" in markdown


def test_equal_maps_are_not_marked(tmp_path: Path) -> None:
    write_sweep(tmp_path, {"mse": 1.0, "ssim": 1.0})
    comparison = compare_runs(find_runs(tmp_path), "loss.name=mse", "loss.name=ssim")
    for row in comparison.categories:
        for metric in METRICS:
            assert row.difference[metric] == (0.0, 0.0, 0.0) and not row.excludes_zero(metric)
    assert " *" not in to_markdown(comparison)


def test_runs_that_scored_other_test_images_are_refused(tmp_path: Path) -> None:
    write_sweep(tmp_path, {"mse": 2.0}, categories=("brick",), seeds=(0,))
    write_compare_run(tmp_path, "brick", 0, "ssim", 0.0, prefix="elsewhere/")
    with pytest.raises(ValueError, match="scored different test images"):
        compare_runs(find_runs(tmp_path), "loss.name=mse", "loss.name=ssim")


def test_runs_differing_in_another_key_are_refused_naming_it(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, {"mse": 2.0}, categories=("brick",), seeds=(0,))
    write_compare_run(tmp_path, "brick", 0, "ssim", 0.0, dataset__seed=1)
    with pytest.raises(ValueError, match=r"differ in dataset\.seed: 0 vs 1"):
        compare_runs(find_runs(tmp_path), "loss.name=mse", "loss.name=ssim")
    assert main([str(tmp_path), "--compare", "loss.name=mse", "loss.name=ssim", "--no-figures"]) == 2
    assert "differ in dataset.seed" in capsys.readouterr().err


def test_two_maps_of_each_run_are_compared_within_runs(tmp_path: Path) -> None:
    write_sweep(tmp_path, {"mse": 2.0})
    comparison = compare_runs(find_runs(tmp_path), "selected", "residual_l2")
    assert [len(row.seeds) for row in comparison.categories] == [2, 2]
    for row in comparison.categories:
        assert row.excludes_zero("pixel_auroc") and row.excludes_zero("image_auroc")
        assert row.b["pixel_auroc"] < row.a["pixel_auroc"]
    assert "A = `selected`, B = `residual_l2`" in to_markdown(comparison)


def test_wilcoxon_needs_six_categories_and_is_holm_corrected(tmp_path: Path) -> None:
    categories = ("a1", "b2", "c3", "d4", "e5", "f6")
    write_sweep(tmp_path, {"mse": 2.0, "ssim": 0.0}, categories=categories, seeds=(0,))
    comparison = compare_runs(find_runs(tmp_path), "loss.name=mse", "loss.name=ssim")
    image = comparison.across["image_auroc"]
    assert not image.note and image.n == 6
    assert image.p == pytest.approx(0.03125) and image.p_holm >= image.p
    assert "Wilcoxon signed-rank p = 0.0312" in to_markdown(comparison)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    fewer = compare_runs([r for r in find_runs(tmp_path) if r.value("category") in categories[:5]],
                         "loss.name=mse", "loss.name=ssim")
    assert fewer.across["image_auroc"].note.startswith("n/a: fewer than 6 categories")


def test_the_cli_writes_and_prints_compare_md(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, {"mse": 2.0, "ssim": 0.0})
    # The default --rows/--cols would refuse these runs in one cell: --compare writes the comparison alone.
    argv = [str(tmp_path), "--compare", "loss.name=mse", "loss.name=ssim", "--no-figures"]
    assert main(argv) == 0
    written = (tmp_path / "report" / "compare.md").read_text()
    assert written.startswith("# Paired comparison: A = `loss.name=mse`, B = `loss.name=ssim`")
    for metric in METRICS:
        assert f"## {metric}" in written
    assert "| category | n seeds | A | B | A − B [95% CI] |" in written
    assert written in capsys.readouterr().out
    assert not (tmp_path / "report" / "table.md").exists()


def test_two_runs_per_category_and_seed_are_refused_and_where_picks_one(tmp_path: Path, capsys) -> None:
    # Two runs per (category, seed) that differ in a key (the study's white and gray test sets): pooling
    # them would mix two conditions, so the comparison refuses and names the --where that picks one.
    write_sweep(tmp_path, {"mse": 2.0, "ssim": 0.0})
    with pytest.raises(ValueError, match=r"differ in loss\.name: 'mse' vs 'ssim'.*--where loss\.name=mse"):
        compare_runs(find_runs(tmp_path), "selected", "residual_l2")
    argv = [str(tmp_path), "--compare", "selected", "residual_l2", "--no-figures"]
    assert main([*argv, "--where", "loss.name=ssim"]) == 0
    written = (tmp_path / "report" / "loss.name=ssim" / "compare.md").read_text()
    assert "| brick | 2 |" in written and "| grass | 2 |" in written
    assert not (tmp_path / "report" / "compare.md").exists()
    assert main([*argv, "--where", "loss.name=l1"]) == 2
    assert "no complete run has loss.name=l1; its values here: mse, ssim" in capsys.readouterr().err
    assert main([*argv, "--where", "loss.name"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err


def test_where_makes_a_table_of_one_subset_in_its_own_folder(tmp_path: Path, capsys) -> None:
    write_sweep(tmp_path, {"mse": 2.0, "ssim": 0.0})
    argv = [str(tmp_path), "--cols", "seed", "--no-figures"]
    assert main(argv) == 2  # one cell would hold an mse and an ssim run
    assert "loss.name" in capsys.readouterr().err
    assert main([*argv, "--where", "loss.name=mse"]) == 0
    table = (tmp_path / "report" / "loss.name=mse" / "table.md").read_text()
    assert "| brick |" in table and "| grass |" in table
