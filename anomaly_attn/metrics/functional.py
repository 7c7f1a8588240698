"""Anomaly-detection metrics on whole arrays: image AUROC / F1-max, pixel AUROC, AUPRO, F1-max, IoU.

Every function here is exact: it returns the sort-based definition (scikit-learn's ``roc_auc_score`` and
``precision_recall_curve``, the MVTec AD AUPRO) up to float64 rounding in the final sums (< 1e-12), for any
finite scores -- outliers, heavy tails, ties, constant maps, 1e-30 next to 1e30; ``pixel_metrics``
reports it as ``error_bound = 0.0`` (the streaming Metric's bound can be positive). Pixel functions take
anomaly maps (``N×H×W`` or ``N×1×H×W``, numpy or torch) and binary ground-truth masks of the same shape; a
NaN or inf in a map is an error naming the image (``inputs.py``).

How (one sort, no histogram): the pixels are counted into one exact
:class:`~anomaly_attn.metrics.score_rows.ScoreRows` table (``exact_sort.py``), from which every metric and
its error bound are computed (``score_rows.py``, where AUPRO's MVTec AD definition is spelled out; the
ground-truth regions are labelled in ``regions.py``). The streaming Metrics build the same table from
bounded memory, where rows can be ranges of scores and the bound can be positive.

Cost and memory: ``pixel_auroc`` and ``pixel_metrics`` sort every normal pixel (about one ``np.sort``), in
slices of at most ``exact_sort.SORT_CHUNK_PIXELS`` (128 MB of float32 scores), never a second copy of the
maps. ``aupro`` and ``f1_max`` sort only the top of the ranking that can hold the exact result
(``top_region.py``).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import roc_auc_score

from anomaly_attn.metrics.exact_sort import exact_rows
from anomaly_attn.metrics.inputs import (
    ArrayLike,
    _as_binary,
    _to_numpy,
    _validate_fpr_limit,
    check_finite,
    prepare_maps_and_masks,
)
from anomaly_attn.metrics.score_rows import _undefined, rows_aupro, rows_auroc, rows_f1_max
from anomaly_attn.metrics.top_region import _exact_aupro, _f1_max_threshold, _Pixels


def _warn_num_bins_ignored(num_bins: int | None) -> None:
    if num_bins is not None:
        warnings.warn(
            "num_bins is ignored by the array functions: they are exact now (no bins); drop the argument.",
            DeprecationWarning,
            stacklevel=3,
        )


def pixel_metrics(
    maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, *, num_bins: int | None = None
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_aupro``, ``pixel_f1_max``, ``pixel_f1_threshold`` and ``error_bound``
    (the largest error bound of the three; 0.0: exact) from one sort of the pixels."""
    _warn_num_bins_ignored(num_bins)
    fpr_limit = _validate_fpr_limit(fpr_limit)
    pixels = _Pixels.from_maps(maps, masks)
    region_sizes, num_regions = pixels.regions
    rows = exact_rows(pixels.scores, pixels.defect, region_sizes, num_regions)
    auroc, auroc_bound = rows_auroc(rows)
    aupro_value, aupro_bound = rows_aupro(rows, fpr_limit)
    f1_best, f1_threshold, f1_bound = rows_f1_max(rows)
    return {
        "pixel_auroc": auroc,
        "pixel_aupro": aupro_value,
        "pixel_f1_max": f1_best,
        "pixel_f1_threshold": f1_threshold,
        "error_bound": max(auroc_bound, aupro_bound, f1_bound),
    }


def pixel_auroc(maps: ArrayLike, masks: ArrayLike, *, num_bins: int | None = None) -> float:
    """Area under the ROC curve over all pixels of all images (exact; no region labelling)."""
    _warn_num_bins_ignored(num_bins)
    pixels = _Pixels.from_maps(maps, masks)
    return rows_auroc(exact_rows(pixels.scores, pixels.defect))[0]


def aupro(
    maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, *, num_bins: int | None = None
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD;
    exact); nan with a warning when the masks have no defect region."""
    _warn_num_bins_ignored(num_bins)
    fpr_limit = _validate_fpr_limit(fpr_limit)
    pixels = _Pixels.from_maps(maps, masks)
    return _exact_aupro(pixels, fpr_limit)


def iou(maps: ArrayLike, masks: ArrayLike, threshold: float) -> float:
    """Intersection over union of ``map >= threshold`` and the masks, pooled over all images (exact).

    Choose ``threshold`` on validation data, never on the test set.
    """
    scores, defect = prepare_maps_and_masks(maps, masks)
    predicted = scores >= threshold
    union = np.count_nonzero(predicted | defect)
    if union == 0:
        return _undefined("IoU", "neither the masks nor the thresholded maps contain a positive pixel")
    return np.count_nonzero(predicted & defect) / union


def _image_scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    score_array, label_array = _to_numpy(scores).ravel(), _to_numpy(labels).ravel()
    if score_array.shape != label_array.shape:
        raise ValueError(f"got {score_array.size} image scores but {label_array.size} labels.")
    if not np.issubdtype(score_array.dtype, np.floating):
        score_array = score_array.astype(np.float64)
    check_finite(score_array, "scores")
    return score_array, _as_binary(label_array, "labels")


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact image-level AUROC (one score per image, labels 0 normal / 1 anomalous)."""
    score_array, label_array = _image_scores_and_labels(scores, labels)
    if label_array.all() or not label_array.any():
        return _undefined("image AUROC", f"all {label_array.size} labels are {int(label_array[0])}")
    return float(roc_auc_score(label_array, score_array))


def f1_max_threshold(
    scores: ArrayLike, labels: ArrayLike, *, num_bins: int | None = None
) -> tuple[float, float]:
    """Best F1 over all thresholds and a threshold achieving it (``score >= threshold`` is anomalous; it is
    one of the scores). Exact, at the same cost for one score per image (1-D) and for maps with masks
    (``N×H×W`` / ``N×1×H×W``): only the top of the ranking that can hold the optimum is sorted."""
    _warn_num_bins_ignored(num_bins)
    if _to_numpy(scores).ndim > 1:
        pixels = _Pixels.from_maps(scores, labels)
    else:
        score_array, label_array = _image_scores_and_labels(scores, labels)
        if score_array.size == 0:
            raise ValueError("no scores to evaluate: the scores are empty.")
        pixels = _Pixels(score_array, label_array)
    return _f1_max_threshold(pixels)


def f1_max(scores: ArrayLike, labels: ArrayLike, *, num_bins: int | None = None) -> float:
    """Best F1 over all thresholds; see :func:`f1_max_threshold`."""
    _warn_num_bins_ignored(num_bins)
    return f1_max_threshold(scores, labels)[0]
