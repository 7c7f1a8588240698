"""95 % confidence intervals of the test metrics by a stratified bootstrap over test images.

Method: a resample draws the anomalous and the normal test images separately, with replacement, each
group keeping its size (:func:`resample_weights`: ``B × n`` counts, seeded). Every metric of a resample is
the metric of the test set in which image ``i`` appears ``w_i`` times; the interval is the percentile
interval of the ``B`` values (:func:`interval`; a resample with no defect image gives nan and is left
out). Two maps scored on the same images with the same weights are compared by the distribution of their
differences (:func:`paired_difference`), which keeps what the images share.

Exact (equal to the package's metric of the resampled set, up to float64 rounding of the final division):
image AUROC and image F1-max (one sort of the image scores, weighted cumulative counts for all resamples
at once), and pixel AUROC, ``w·pairs·w / ((w·P)(w·N))`` with the exact pair-count matrix of
:class:`~anomaly_attn.metrics.pair_counts.PixelParts` (integer counts, so every sum is exact in
float64); with unit weights it equals ``functional.pixel_auroc``.

Approximated: AUPRO (up to ``fpr_limit``, divided by it, MVTec AD) and pixel F1-max are computed from per-
image curves on a grid of at most ``grid`` thresholds (``pair_counts.py`` says where they go). The grid
value is within a bound of the exact one, computed with the value: ``PixelParts.aupro_bound`` /
``f1_bound`` at unit weights, :func:`~anomaly_attn.metrics.pair_counts.grid_metrics` per resample.
F1-max on the grid never exceeds the exact one; at unit weights it equals it (the exact optimum is a grid
threshold). On the benchmark's 100 maps of 256² (30 with blob defects, 999 thresholds) the unit-weight
bounds are 6.5e-4 (AUPRO; its measured difference to ``functional.aupro`` is 1.5e-6) and 1.1e-3 (F1-max,
a first-order worst case), at most 7.3e-4 / 2.0e-3 over 1000 resamples, against interval widths of
0.086 / 0.072. Maps with at most ``grid`` distinct scores are exact (bounds 0).

Cost: building ``PixelParts`` is one sort of all pixels (packed float64) plus a few linear passes; a
resample then costs ``O(n²)`` for pixel AUROC (one batched matmul for all ``B``) and ``O(n G)`` for AUPRO
and F1 (three ``B × n × G`` matmuls), independent of the number of pixels. On the benchmark's category
(``benchmarks/bench_intervals.py``), ``PixelParts`` + the image and pixel AUROC intervals with B = 1000
cost about 3× one ``np.sort`` of the 6.6 M scores, the AUPRO / F1 intervals another ~0.4×. numpy and
scipy only.
"""

from __future__ import annotations

import numpy as np

from anomaly_attn.metrics.pair_counts import PixelParts, grid_metrics

__all__ = [
    "PixelParts",
    "image_metric_samples",
    "interval",
    "map_intervals",
    "paired_difference",
    "pixel_auroc_samples",
    "pixel_metric_samples",
    "resample_weights",
]


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    if labels.dtype != bool:
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError("labels must hold only 0 (normal) and 1 (anomalous).")
        labels = labels == 1
    return labels


def resample_weights(labels: np.ndarray, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """``resamples × n`` int32 counts of a stratified bootstrap: the anomalous (label 1) and the normal
    (label 0) images are drawn separately with replacement, each group keeping its size in every row.
    Deterministic for a ``seed`` (``np.random.default_rng``)."""
    labels = _binary_labels(labels)
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}.")
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, labels.size), dtype=np.int32)
    for group in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        if group.size == 0:
            continue
        draws = rng.integers(0, group.size, size=(resamples, group.size))
        draws += np.arange(resamples)[:, None] * group.size
        counts = np.bincount(draws.ravel(), minlength=resamples * group.size)
        weights[:, group] = counts.reshape(resamples, group.size)
    return weights


def _as_weights(weights: np.ndarray, n: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights[None] if weights.ndim == 1 else weights
    if weights.ndim != 2 or weights.shape[1] != n:
        raise ValueError(f"weights must be B × {n} (one column per image), got {weights.shape}.")
    return weights


def image_metric_samples(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray
                         ) -> dict[str, np.ndarray]:
    """``image_auroc`` and ``image_f1_max`` of each weight row (``B × n``), exact: the images are sorted
    once, and each row's weighted counts per distinct score give the Mann-Whitney sum (ties one half) and
    F1 at every threshold. nan where a row has no anomalous (AUROC: or no normal) image."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = _binary_labels(labels)
    if scores.size != labels.size:
        raise ValueError(f"got {scores.size} image scores but {labels.size} labels.")
    if not np.isfinite(scores).all():
        raise ValueError("image scores must be finite.")
    weights = _as_weights(weights, scores.size)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ordered = weights[:, order]
    anomalous = np.add.reduceat(ordered * labels[order], starts, axis=1)  # per distinct score, ascending
    normal = np.add.reduceat(ordered * ~labels[order], starts, axis=1)
    positives, negatives = anomalous.sum(axis=1), normal.sum(axis=1)
    normal_below = np.cumsum(normal, axis=1) - normal
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (anomalous * (normal_below + 0.5 * normal)).sum(axis=1) / (positives * negatives)
        true_positives = np.cumsum(anomalous[:, ::-1], axis=1)  # at or above each score, descending
        false_positives = np.cumsum(normal[:, ::-1], axis=1)
        f1 = 2.0 * true_positives / (true_positives + false_positives + positives[:, None])
        f1_max = f1.max(axis=1)
    return {"image_auroc": auroc, "image_f1_max": f1_max}


def pixel_auroc_samples(parts: PixelParts, weights: np.ndarray) -> np.ndarray:
    """Pixel AUROC of each weight row: ``w·pairs·w / ((w·P)(w·N))``, one ``B × n × n`` matmul; exact."""
    weights = _as_weights(weights, parts.pairs.shape[0])
    won = np.einsum("bi,bi->b", weights @ parts.pairs, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        return won / ((weights @ parts.positives) * (weights @ parts.negatives))


def pixel_metric_samples(parts: PixelParts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``pixel_auroc`` (exact), ``pixel_aupro`` and ``pixel_f1_max`` (on the grid) of each weight row."""
    weights = _as_weights(weights, parts.pairs.shape[0])
    on_grid = grid_metrics(parts, weights)
    return {
        "pixel_auroc": pixel_auroc_samples(parts, weights),
        "pixel_aupro": on_grid["pixel_aupro"],
        "pixel_f1_max": on_grid["pixel_f1_max"],
    }


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval holding ``level`` of the samples, nan samples left out (nan, nan if all are)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    samples = np.asarray(samples, dtype=np.float64).ravel()
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize(samples: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """``{"low", "high", "std"}`` of one metric's resampled values (nan ones left out)."""
    low, high = interval(samples, level)
    finite = samples[~np.isnan(samples)]
    std = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return {"low": low, "high": high, "std": std}


def map_intervals(image_scores: np.ndarray, labels: np.ndarray, parts: PixelParts | None,
                  weights: np.ndarray, level: float = 0.95) -> dict[str, dict[str, float]]:
    """``{metric: {"low", "high", "std"}}`` for ``image_auroc`` and ``image_f1_max`` and, with ``parts``
    (the same images, in the same order), ``pixel_auroc``, ``pixel_aupro`` and ``pixel_f1_max``."""
    samples = image_metric_samples(image_scores, labels, weights)
    if parts is not None:
        samples.update(pixel_metric_samples(parts, weights))
    return {metric: summarize(values, level) for metric, values in samples.items()}


def paired_difference(samples_a: dict[str, np.ndarray], samples_b: dict[str, np.ndarray],
                      level: float = 0.95) -> dict[str, dict[str, float]]:
    """For two maps scored on the same images with the same weights (the samples of
    :func:`image_metric_samples` / :func:`pixel_metric_samples`): per metric both hold, the mean of the
    resampled differences ``a - b``, their percentile interval (``low``, ``high``) and the two-sided
    bootstrap p-value ``min(1, 2 · min(P(d <= 0), P(d >= 0)))`` over the non-nan differences."""
    result = {}
    for metric in samples_a.keys() & samples_b.keys():
        differences = np.asarray(samples_a[metric], np.float64) - np.asarray(samples_b[metric], np.float64)
        differences = differences[~np.isnan(differences)]
        if differences.size == 0:
            result[metric] = dict.fromkeys(("mean", "low", "high", "p_two_sided"), float("nan"))
            continue
        low, high = interval(differences, level)
        tail = min(np.mean(differences <= 0.0), np.mean(differences >= 0.0))
        result[metric] = {"mean": float(differences.mean()), "low": low, "high": high,
                          "p_two_sided": float(min(1.0, 2.0 * tail))}
    return dict(sorted(result.items()))
