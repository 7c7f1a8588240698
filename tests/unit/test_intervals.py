"""Bootstrap intervals of the test metrics (anomaly_attn/metrics/intervals.py, pair_counts.py): exact at unit
weights and for any resample where promised, within the recorded bound on the grid, and calibrated."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm

from anomaly_attn.metrics import functional
from anomaly_attn.metrics.intervals import (
    PixelParts,
    image_metric_samples,
    interval,
    map_intervals,
    paired_difference,
    pixel_metric_samples,
    resample_weights,
)
from anomaly_attn.metrics.pair_counts import grid_metrics


def blob_maps(n_images: int = 12, size: int = 40, seed: int = 0, decimals: int | None = 1,
              noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth float32 maps (negative scores included; rounded to ``decimals``: many ties, across labels
    too), 1-2 blob defects on every third image; ``noise`` adds per-pixel noise (a worse map)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    maps = np.empty((n_images, size, size), dtype=np.float32)
    masks = np.zeros((n_images, size, size), dtype=bool)
    labels = (np.arange(n_images) % 3 == 1).astype(np.int64)
    for image in range(n_images):
        anomaly_map = ndimage.gaussian_filter(rng.standard_normal((size, size)), 2.0) * 3.0
        for _ in range(rng.integers(1, 3) if labels[image] else 0):
            center = rng.uniform(0.2 * size, 0.8 * size, size=2)
            radius = rng.uniform(0.06 * size, 0.15 * size, size=2)
            ellipse = ((rows - center[0]) / radius[0]) ** 2 + ((cols - center[1]) / radius[1]) ** 2
            masks[image] |= ellipse <= 1.0
            anomaly_map += rng.uniform(0.5, 2.0) * np.exp(-0.5 * ellipse)
        maps[image] = anomaly_map + noise * rng.standard_normal((size, size))
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps, masks, labels


def exact_metrics(maps: np.ndarray, masks: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """The package's exact pixel metrics of the test set in which image ``i`` appears ``weights[i]`` times."""
    repeated = np.repeat(np.arange(len(maps)), weights)
    maps, masks = maps[repeated], masks[repeated]
    return {"pixel_auroc": functional.pixel_auroc(maps, masks), "pixel_aupro": functional.aupro(maps, masks),
            "pixel_f1_max": functional.f1_max(maps, masks)}


def brute_force_pairs(maps: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    n = len(maps)
    pairs = np.zeros((n, n))
    for i in range(n):
        defect_scores = maps[i][masks[i]].astype(np.float64)[:, None]
        for j in range(n):
            normal_scores = maps[j][~masks[j]].astype(np.float64)[None]
            pairs[i, j] = (defect_scores > normal_scores).sum() + 0.5 * (defect_scores == normal_scores).sum()
    return pairs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_counts_equal_a_brute_force_count_with_ties(dtype) -> None:
    """Small integer scores (ties within and across labels, negative scores, -0.0), images of different
    sizes; float64 scores that float32 cannot hold take the other sort path."""
    rng = np.random.default_rng(5)
    shapes = [(5, 6), (4, 4), (6, 3), (5, 5), (3, 7)]
    maps = [rng.integers(-2, 3, size=shape).astype(dtype) for shape in shapes]
    maps[0][0, 0] = -0.0
    masks = [rng.random(shape) < 0.35 for shape in shapes]
    masks[2][:] = False  # an image without defect pixels
    if dtype == np.float64:
        maps[1] = maps[1] + 1e-12  # not a float32: the index-sort path
    parts = PixelParts.from_maps(maps, masks, grid=16)
    expected = brute_force_pairs(maps, masks)
    assert np.array_equal(parts.pairs, expected)
    assert np.array_equal(parts.positives, [mask.sum() for mask in masks])
    assert np.array_equal(parts.negatives, [(~mask).sum() for mask in masks])
    assert np.any(expected % 1 == 0.5)  # the example holds ties across labels


@pytest.mark.parametrize("decimals", [1, 3, None])
def test_unit_weights_reproduce_the_exact_package_metrics(decimals: int | None) -> None:
    """Rounded to 1 decimal the maps hold fewer distinct scores than the grid: all are thresholds, so
    AUPRO is exact (bound 0); otherwise the grid is within its recorded (small) bound."""
    maps, masks, labels = blob_maps(decimals=decimals)
    parts = PixelParts.from_maps(maps, masks)
    samples = pixel_metric_samples(parts, np.ones((1, len(maps)), dtype=np.int32))
    assert abs(samples["pixel_auroc"][0] - functional.pixel_auroc(maps, masks)) <= 1e-12
    exact_aupro = functional.aupro(maps, masks)
    if decimals == 1:
        assert parts.aupro_bound == parts.f1_bound == 0.0 and parts.thresholds.size < 1000
    else:
        assert parts.thresholds.size > 500 and 0 < parts.aupro_bound < 2e-3
    assert abs(samples["pixel_aupro"][0] - exact_aupro) <= parts.aupro_bound + 1e-12
    # The exact F1 optimum is a grid threshold: equal at unit weights, and never above the exact value.
    assert abs(samples["pixel_f1_max"][0] - functional.f1_max(maps, masks)) <= 1e-12
    assert parts.f1_bound < 0.02
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    image = image_metric_samples(image_scores, labels, np.ones((1, len(maps))))
    assert abs(image["image_auroc"][0] - functional.image_auroc(image_scores, labels)) <= 1e-12
    assert abs(image["image_f1_max"][0] - functional.f1_max(image_scores, labels)) <= 1e-12


@pytest.mark.parametrize(("grid", "decimals"), [(1000, 1), (1000, None), (24, None)])
def test_every_resample_is_exact_or_within_its_bound(grid: int, decimals: int | None) -> None:
    """Each weight row equals the exact metric of the test set with image ``i`` repeated ``w_i`` times:
    pixel AUROC exactly, AUPRO and F1-max within the per-resample bound (exactly where all distinct scores
    are thresholds; a coarse grid too, where the bound is what keeps it honest)."""
    maps, masks, labels = blob_maps(n_images=9, size=32, seed=2, decimals=decimals)
    parts = PixelParts.from_maps(maps, masks, grid=grid)
    weights = resample_weights(labels, 4, seed=1)
    samples, on_grid = pixel_metric_samples(parts, weights), grid_metrics(parts, weights)
    differences: dict[str, list[float]] = {"pixel_aupro": [], "pixel_f1_max": []}
    for row, weight_row in enumerate(weights):
        exact = exact_metrics(maps, masks, weight_row)
        assert abs(samples["pixel_auroc"][row] - exact["pixel_auroc"]) <= 1e-12
        for metric, found in differences.items():
            found.append(abs(samples[metric][row] - exact[metric]))
            assert found[-1] <= on_grid[f"{metric}_bound"][row] + 1e-12, (metric, row)
        assert samples["pixel_f1_max"][row] <= exact["pixel_f1_max"] + 1e-12
    if decimals == 1:
        assert max(map(max, differences.values())) <= 1e-12
    if grid == 24:  # visibly approximate, yet bounded
        assert min(max(found) for found in differences.values()) > 1e-3


def test_image_metrics_are_exact_for_integer_weights() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.standard_normal(30), 1)  # ties
    labels = (rng.random(30) < 0.4).astype(int)
    weights = resample_weights(labels, 5, seed=2)
    samples = image_metric_samples(scores, labels, weights)
    for row, weight_row in enumerate(weights):
        repeated = np.repeat(np.arange(30), weight_row)
        assert samples["image_auroc"][row] == pytest.approx(
            functional.image_auroc(scores[repeated], labels[repeated]), abs=1e-12)
        assert samples["image_f1_max"][row] == pytest.approx(
            functional.f1_max(scores[repeated], labels[repeated]), abs=1e-12)


def test_stratified_weights_keep_group_sizes_and_are_deterministic() -> None:
    labels = np.random.default_rng(0).permutation(np.r_[np.ones(7), np.zeros(13)]).astype(int)
    weights = resample_weights(labels, 500, seed=3)
    assert weights.dtype == np.int32 and weights.shape == (500, 20)
    assert (weights[:, labels == 1].sum(axis=1) == 7).all()
    assert (weights[:, labels == 0].sum(axis=1) == 13).all()
    assert np.abs(weights.mean(axis=0) - 1.0).max() < 0.2  # each image drawn once on average
    assert np.array_equal(weights, resample_weights(labels, 500, seed=3))
    assert not np.array_equal(weights, resample_weights(labels, 500, seed=4))
    single = resample_weights(np.r_[1, np.zeros(5, dtype=int)], 50)
    assert (single[:, 0] == 1).all()  # a group of one is always drawn once


def test_interval_ignores_resamples_without_a_defect_image() -> None:
    scores, labels = np.array([0.1, 0.9, 0.4, 0.8]), np.array([0, 1, 0, 1])
    weights = np.array([[2, 0, 2, 0], [1, 1, 1, 1], [2, 1, 0, 1]])  # the first row has no anomalous image
    auroc = image_metric_samples(scores, labels, weights)["image_auroc"]
    assert np.isnan(auroc[0]) and not np.isnan(auroc[1:]).any()
    assert interval(auroc) == interval(auroc[1:])
    assert interval(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), level=0.5) == (1.0, 3.0)
    assert all(np.isnan(interval(np.full(3, np.nan))))


def _hanley_mcneil_width(auroc: float, anomalous: int, normal: int) -> float:
    q1, q2 = auroc / (2 - auroc), 2 * auroc**2 / (1 + auroc)
    variance = (auroc * (1 - auroc) + (anomalous - 1) * (q1 - auroc**2) + (normal - 1) * (q2 - auroc**2)) / (
        anomalous * normal)
    return 2 * norm.ppf(0.975) * np.sqrt(variance)


def test_image_auroc_intervals_cover_a_known_auroc_at_the_nominal_rate() -> None:
    """Normals N(0, 1), anomalies N(d, 1): true AUROC Φ(d/√2). 100 seeded datasets of 40 + 40 images."""
    shift = 1.19
    true_auroc = float(norm.cdf(shift / np.sqrt(2)))
    labels = np.r_[np.zeros(40, dtype=int), np.ones(40, dtype=int)]
    covered, widths = 0, []
    for seed in range(100):
        scores = np.random.default_rng(seed).standard_normal(80) + shift * labels
        low, high = interval(image_metric_samples(scores, labels, resample_weights(labels, 1000, seed))[
            "image_auroc"])
        covered += low <= true_auroc <= high
        widths.append(high - low)
    assert 90 <= covered <= 99, covered
    width_ratio = np.mean(widths) / _hanley_mcneil_width(true_auroc, 40, 40)
    assert 1 / 1.5 <= width_ratio <= 1.5, width_ratio


def test_paired_difference_finds_a_planted_difference_and_rarely_a_null_one() -> None:
    labels = np.r_[np.zeros(40, dtype=int), np.ones(40, dtype=int)]
    rng = np.random.default_rng(0)
    weights = resample_weights(labels, 1000, seed=0)
    better = image_metric_samples(2.5 * labels + rng.standard_normal(80), labels, weights)
    worse = image_metric_samples(0.5 * labels + rng.standard_normal(80), labels, weights)
    planted = paired_difference(better, worse)["image_auroc"]
    assert planted["low"] > 0 and planted["mean"] > 0.2 and planted["p_two_sided"] < 0.01
    flagged = 0
    for seed in range(50):  # two different maps of equal true AUROC on the same images
        rng = np.random.default_rng(100 + seed)
        weights = resample_weights(labels, 1000, seed)
        first = image_metric_samples(labels + rng.standard_normal(80), labels, weights)
        second = image_metric_samples(labels + rng.standard_normal(80), labels, weights)
        null = paired_difference(first, second)["image_auroc"]
        flagged += not null["low"] <= 0.0 <= null["high"]
    assert flagged <= 5, flagged


def test_map_intervals_and_a_pixel_level_paired_difference() -> None:
    maps, masks, labels = blob_maps(n_images=15, size=32, seed=4, decimals=None)
    noisy, _, _ = blob_maps(n_images=15, size=32, seed=4, decimals=None, noise=1.5)
    weights = resample_weights(labels, 300, seed=0)
    image_scores = maps.reshape(len(maps), -1).max(axis=1)
    parts = PixelParts.from_maps(maps, masks)
    result = map_intervals(image_scores, labels, parts, weights)
    assert set(result) == {"image_auroc", "image_f1_max", "pixel_auroc", "pixel_aupro", "pixel_f1_max"}
    for summary in result.values():
        assert summary["low"] <= summary["high"] and summary["std"] >= 0
    pixel_auroc = result["pixel_auroc"]
    assert pixel_auroc["low"] <= functional.pixel_auroc(maps, masks) <= pixel_auroc["high"]
    assert set(map_intervals(image_scores, labels, None, weights)) == {"image_auroc", "image_f1_max"}
    clean = pixel_metric_samples(parts, weights)
    worse = pixel_metric_samples(PixelParts.from_maps(noisy, masks), weights)
    difference = paired_difference(clean, worse)
    assert set(difference) == {"pixel_auroc", "pixel_aupro", "pixel_f1_max"}
    assert difference["pixel_auroc"]["low"] > 0 and difference["pixel_aupro"]["low"] > 0
    same = paired_difference(clean, clean)["pixel_auroc"]
    assert same["low"] == same["high"] == 0.0 and same["p_two_sided"] == 1.0


def test_benchmark_runs_on_a_tiny_category() -> None:
    from benchmarks import bench_intervals

    rows = bench_intervals.run(n_maps=6, size=24, resamples=20, repeats=1)
    assert len(rows) == 4 and rows[0]["target"] == "<= 10" and rows[0]["reference_value"] > 0
    assert all(row["passed"] is not False for row in rows[2:])  # the grid is within its bounds
