"""Cost of the bootstrap intervals of the test metrics against one ``np.sort`` of the same scores.

    python -m benchmarks.bench_intervals        # prints the rows

Data: a generated category of ``n_maps`` smooth random anomaly maps (Gaussian-filtered noise) of
``size``², about 30 % of them defect images with 1-3 irregular blob masks whose maps are raised inside
and around the blob; the image score is the map's maximum. Timed, for one map, each call paying its full
cost (nothing is cached between calls): building :class:`PixelParts` + the stratified weights + the
image AUROC, image F1-max and pixel AUROC intervals (``B`` resamples), against one ``np.sort`` of the maps'
scores; and, from a built ``PixelParts``, the AUPRO and pixel F1-max intervals (the grid curves). CPU
time (the matmuls use every core, so this is the total work), median of alternated rounds after one
untimed call of each (``bench_metrics._alternating_median``). Two more rows compare the unit-weight grid
AUPRO / F1-max with the exact ``functional.aupro`` / ``f1_max`` and with the bound ``PixelParts`` records.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import ndimage

from anomaly_attn.metrics import aupro, f1_max
from anomaly_attn.metrics.intervals import (
    PixelParts,
    image_metric_samples,
    interval,
    pixel_auroc_samples,
    pixel_metric_samples,
    resample_weights,
)
from anomaly_attn.metrics.pair_counts import grid_metrics
from benchmarks.bench_metrics import _alternating_median


def blob_category(n_maps: int = 100, size: int = 256, defect_fraction: float = 0.3, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(maps N×H×W float32, masks N×H×W bool, labels N)``; ``defect_fraction`` of the images (at least
    one) hold 1-3 irregular blobs (an ellipse with a smooth-noise boundary)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    maps = np.empty((n_maps, size, size), dtype=np.float32)
    masks = np.zeros((n_maps, size, size), dtype=bool)
    labels = np.zeros(n_maps, dtype=np.int64)
    labels[rng.choice(n_maps, max(1, round(defect_fraction * n_maps)), replace=False)] = 1
    for image in range(n_maps):
        background = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 64)
        anomaly_map = background / background.std()
        for _ in range(rng.integers(1, 4) if labels[image] else 0):
            center_row, center_col = rng.uniform(0.15 * size, 0.85 * size, size=2)
            radius_row, radius_col = rng.uniform(0.03 * size, 0.10 * size, size=2)
            ellipse = ((rows - center_row) / radius_row) ** 2 + ((cols - center_col) / radius_col) ** 2
            boundary = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 48)
            masks[image] |= ellipse + 0.6 * boundary / boundary.std() <= 1.0
            anomaly_map += rng.uniform(0.8, 3.0) * np.exp(-0.5 * ellipse)
        maps[image] = anomaly_map
    return maps, masks, labels


def _row(benchmark: str, ours: float, unit: str, reference: str, reference_value: float, target: str,
         passed: bool | None) -> dict:
    return {"benchmark": benchmark, "ours": ours, "unit": unit, "reference": reference,
            "reference_value": reference_value,
            "ratio": ours / reference_value if reference_value else float("nan"), "target": target,
            "passed": passed}


def run(n_maps: int = 100, size: int = 256, resamples: int = 1000, seed: int = 0, repeats: int = 5
        ) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``: the AUROC
    intervals (``PixelParts`` built inside the timed call) against one ``np.sort`` (target <= 10), the
    AUPRO/F1 intervals from a built ``PixelParts``, and the grid's distance to the exact metrics."""
    maps, masks, labels = blob_category(n_maps, size, seed=seed)
    image_scores = maps.reshape(n_maps, -1).max(axis=1)

    def auroc_intervals() -> dict:
        parts = PixelParts.from_maps(maps, masks)
        weights = resample_weights(labels, resamples, seed)
        samples = image_metric_samples(image_scores, labels, weights)
        samples["pixel_auroc"] = pixel_auroc_samples(parts, weights)
        return {metric: interval(values) for metric, values in samples.items()}

    parts = PixelParts.from_maps(maps, masks)
    weights = resample_weights(labels, resamples, seed)

    def grid_intervals() -> dict:
        on_grid = grid_metrics(parts, weights)
        return {metric: interval(on_grid[metric]) for metric in ("pixel_aupro", "pixel_f1_max")}

    def sort() -> object:
        return np.sort(maps.ravel())

    seconds = _alternating_median(
        {"sort": sort, "auroc": auroc_intervals, "grid": grid_intervals}, 2 * repeats - 1, time.process_time
    )
    unit_weights = pixel_metric_samples(parts, np.ones((1, n_maps)))
    aupro_error = abs(float(unit_weights["pixel_aupro"][0]) - aupro(maps, masks))
    f1_error = abs(float(unit_weights["pixel_f1_max"][0]) - f1_max(maps, masks))
    data = (f"{n_maps}×{size}² maps ({int(labels.sum())} defect images), B = {resamples}, "
            f"{parts.thresholds.size} grid thresholds")
    sort_label = f"one np.sort of the {maps.size / 1e6:.1f} M float32 scores"
    return [
        _row(f"PixelParts + image AUROC, image F1-max and pixel AUROC intervals, {data}",
             seconds["auroc"], "s (CPU)", sort_label, seconds["sort"], "<= 10",
             seconds["auroc"] / seconds["sort"] <= 10),
        _row(f"AUPRO + pixel F1-max intervals from a built PixelParts, {data}",
             seconds["grid"], "s (CPU)", sort_label, seconds["sort"], "documented", None),
        _row("|unit-weight grid AUPRO - functional.aupro|", aupro_error, "", "PixelParts.aupro_bound",
             parts.aupro_bound, "<= 1", aupro_error <= parts.aupro_bound + 1e-12),
        _row("|unit-weight grid F1-max - functional.f1_max|", f1_error, "", "PixelParts.f1_bound",
             parts.f1_bound, "<= 1", f1_error <= parts.f1_bound + 1e-12),
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
