"""Cost of the pixel metrics against one ``np.sort`` of the same scores, and the streaming Metric's memory.

    python -m benchmarks.bench_metrics          # prints a Markdown table

Data: smooth random anomaly maps (Gaussian-filtered noise) with planted elliptical defects on half of
the images (about 2-5 % defect pixels) whose maps are raised inside and around the defect.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
from scipy import ndimage

from anomaly_attn.metrics import AnomalyPixelMetrics, aupro, f1_max, pixel_auroc, pixel_metrics

NUM_STREAMING_BATCHES = 10


def synthetic_maps_and_masks(n_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(maps N×H×W float32, masks N×H×W float32 in {0, 1})``; defects only on the odd-indexed images."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    maps = np.empty((n_maps, size, size), dtype=np.float32)
    masks = np.zeros((n_maps, size, size), dtype=np.float32)
    for image_index in range(n_maps):
        background = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 64)
        anomaly_map = background / background.std()
        if image_index % 2:
            for _ in range(rng.integers(1, 4)):
                center_row, center_col = rng.uniform(0.15 * size, 0.85 * size, size=2)
                radius_row, radius_col = rng.uniform(0.05 * size, 0.14 * size, size=2)
                ellipse = ((rows - center_row) / radius_row) ** 2 + ((cols - center_col) / radius_col) ** 2
                masks[image_index][ellipse <= 1] = 1
                anomaly_map += rng.uniform(1.0, 3.0) * np.exp(-0.5 * ellipse)
        maps[image_index] = anomaly_map
    return maps, masks


def _best_seconds(function, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _streaming(maps: np.ndarray, masks: np.ndarray) -> dict:
    metric = AnomalyPixelMetrics()
    for batch_maps, batch_masks in zip(
        np.array_split(maps, NUM_STREAMING_BATCHES), np.array_split(masks, NUM_STREAMING_BATCHES), strict=True
    ):
        metric.update(batch_maps, batch_masks)
    return metric.compute()


def run(n_maps: int = 100, size: int = 256, seed: int = 0) -> list[dict]:
    """Rows ``{benchmark, seconds, reference, reference_seconds, ratio}``; ``ratio = seconds /
    reference_seconds`` (for the memory row, megabytes / megabytes of the maps themselves)."""
    maps, masks = synthetic_maps_and_masks(n_maps, size, seed)
    sort_seconds = _best_seconds(lambda: np.sort(maps.ravel()))
    functional_seconds = _best_seconds(
        lambda: (pixel_auroc(maps, masks), aupro(maps, masks), f1_max(maps, masks))
    )
    shared_pass_seconds = _best_seconds(lambda: pixel_metrics(maps, masks))
    streaming_seconds = _best_seconds(lambda: _streaming(maps, masks))
    tracemalloc.start()
    _streaming(maps, masks)
    _, peak_bytes = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    scores_label = f"np.sort of {maps.size / 1e6:.1f} M float32 scores"
    maps_megabytes = maps.nbytes / 2**20
    return [
        {
            "benchmark": "pixel_auroc + aupro + f1_max (functional, 3 passes)",
            "seconds": functional_seconds,
            "reference": scores_label,
            "reference_seconds": sort_seconds,
            "ratio": functional_seconds / sort_seconds,
        },
        {
            "benchmark": "pixel_metrics (the same three from one shared pass)",
            "seconds": shared_pass_seconds,
            "reference": scores_label,
            "reference_seconds": sort_seconds,
            "ratio": shared_pass_seconds / sort_seconds,
        },
        {
            "benchmark": f"AnomalyPixelMetrics, {NUM_STREAMING_BATCHES} updates + compute",
            "seconds": streaming_seconds,
            "reference": scores_label,
            "reference_seconds": sort_seconds,
            "ratio": streaming_seconds / sort_seconds,
        },
        {
            "benchmark": "AnomalyPixelMetrics peak_memory_mb (tracemalloc, numpy + Python)",
            "seconds": float("nan"),
            "peak_memory_mb": peak_bytes / 2**20,
            "reference": f"size of the maps ({maps_megabytes:.1f} MB)",
            "reference_seconds": float("nan"),
            "ratio": peak_bytes / 2**20 / maps_megabytes,
        },
    ]


def _markdown_table(rows: list[dict]) -> str:
    lines = [
        "| benchmark | seconds | reference | reference seconds | ratio | peak memory (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        peak = f"{row['peak_memory_mb']:.1f}" if "peak_memory_mb" in row else ""
        lines.append(
            f"| {row['benchmark']} | {row['seconds']:.4f} | {row['reference']} | "
            f"{row['reference_seconds']:.4f} | {row['ratio']:.2f} | {peak} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(_markdown_table(run()))
