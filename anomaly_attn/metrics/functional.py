"""Anomaly-detection metrics on whole arrays: image AUROC / F1-max, pixel AUROC, AUPRO, F1-max, IoU.

Image-level functions take one score per image and are exact (scikit-learn). Pixel-level functions take
anomaly maps (``N×H×W`` or ``N×1×H×W``, numpy or torch) and binary ground-truth masks of the same shape.
They share one fast pass over the pixels: scores are quantized once into ``num_bins`` equal bins over
``[min, max]`` of the maps, and per-bin counts of normal pixels, defect pixels and
``Σ 1/size(region of the pixel)`` over defect pixels are accumulated with ``np.bincount``. Every curve
(ROC, PRO, precision/recall) then comes from reverse cumulative sums over the bins. This is the exact
result for the quantized scores; the only difference to the exact definition is that scores inside one
bin count as ties (about 6.5 M pixels over 2^18 bins differ from the sort-based value by < 1e-5 on
smooth maps, see ``tests/unit/test_metrics.py``), and it costs about as much as one ``np.sort``.

The last histogram is kept, keyed on a digest of the contents of the maps and masks (xxh3-128), so
``pixel_auroc``, ``aupro`` and ``f1_max`` called one after another on the same arrays pay for one pass plus
two digests (a few ms each). Keying on contents, not identity, keeps the result right when arrays are
modified in place or their memory is reused; see ``BENCHMARKS.md`` for the measured costs.

AUPRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): ground-truth regions are the
8-connected components of each mask; the per-region overlap at threshold ``t`` is the fraction of the
region's pixels with score ``>= t``; PRO is its mean over all regions of all images; the false-positive
rate counts every pixel whose mask is 0 (normal images included). PRO is integrated over FPR with the
trapezoid rule from 0 to ``fpr_limit`` (the point at the limit is interpolated) and divided by
``fpr_limit`` -- not by the last FPR reached, which is anomalib's normalization bug.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import xxhash
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score

ArrayLike = np.ndarray | torch.Tensor

# 2^18 bins cost about as much as 2^16 in np.bincount; ties inside a bin then moved pixel AUROC and
# AUPRO by ~1e-8 on 6.5 M smooth-map pixels (2^12 bins: ~1e-6).
DEFAULT_NUM_BINS = 2**18

# Ground-truth regions are 8-connected (MVTec AD): diagonal neighbours belong to the same region.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)

# Pixels quantized per chunk: the float and index temporaries of one chunk stay in cache, which made the
# pass over 6.5 M pixels ~1.6x faster than whole-array temporaries (measured, BENCHMARKS.md).
_CHUNK_PIXELS = 2**18


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Boolean view of 0/1 ground truth; anything else (resized or JPEG masks) is an error, not rounded."""
    if values.dtype == bool:
        return values
    is_one = values == 1
    # Every nonzero value is a 1 exactly when both counts agree (NaN counts as nonzero): two cheap passes.
    if np.count_nonzero(values) != np.count_nonzero(is_one):
        is_binary = is_one | (values == 0)
        bad_values = np.unique(values[~is_binary])[:5]
        raise ValueError(
            f"{name} must contain only 0 and 1, found {int((~is_binary).sum())} other values "
            f"(e.g. {bad_values.tolist()}); threshold masks at 0.5 after resizing and store them as PNG."
        )
    return is_one


def _validate_fpr_limit(fpr_limit: float) -> float:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}; the MVTec AD protocol uses 0.3.")
    return float(fpr_limit)


def prepare_maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores N×H×W float, defect N×H×W bool)`` from maps/masks given as ``H×W``, ``N×H×W`` or
    ``N×1×H×W`` numpy arrays or torch tensors; raise on shape mismatch, non-finite scores or non-binary
    masks."""
    score_array, mask_array = _to_numpy(maps), _to_numpy(masks)
    normalized = []
    for array in (score_array, mask_array):
        if array.ndim == 4 and array.shape[1] == 1:
            array = array[:, 0]
        elif array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(
                f"anomaly maps and masks must be H×W, N×H×W or N×1×H×W; got maps {tuple(score_array.shape)} "
                f"and masks {tuple(mask_array.shape)}"
            )
        normalized.append(array)
    score_array, mask_array = normalized
    if score_array.shape != mask_array.shape:
        raise ValueError(
            f"anomaly maps {tuple(score_array.shape)} and masks {tuple(mask_array.shape)} differ in shape; "
            "resize the maps to the mask size before evaluating."
        )
    if not np.issubdtype(score_array.dtype, np.floating):
        score_array = score_array.astype(np.float32)
    if score_array.size and not (np.isfinite(score_array.min()) and np.isfinite(score_array.max())):
        raise ValueError(f"anomaly maps contain {int((~np.isfinite(score_array)).sum())} NaN/inf values.")
    return score_array, _as_binary(mask_array, "masks")


def defect_region_weights(defect: np.ndarray) -> tuple[np.ndarray, int]:
    """For every defect pixel (in ``defect[defect]`` order) return ``1 / size`` of its 8-connected region
    and the number of regions. Summing the weights of the pixels above a threshold gives
    ``Σ_regions overlap_region(t)`` -- the additive form of PRO that lets it be binned."""
    rows_with_defect, columns_with_defect = defect.any(axis=2), defect.any(axis=1)
    weights_per_image, num_regions = [np.zeros(0)], 0
    for image_index in np.flatnonzero(rows_with_defect.any(axis=1)):
        # Labelling only the bounding box of the defect pixels is ~3x cheaper and keeps their order.
        rows, columns = (
            np.flatnonzero(rows_with_defect[image_index]),
            np.flatnonzero(columns_with_defect[image_index]),
        )
        defect_crop = defect[image_index, rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        region_labels, num_image_regions = ndimage.label(defect_crop, structure=_EIGHT_CONNECTIVITY)
        labels_of_defect_pixels = region_labels[defect_crop]
        weights_per_image.append(1.0 / np.bincount(labels_of_defect_pixels)[labels_of_defect_pixels])
        num_regions += num_image_regions
    return np.concatenate(weights_per_image), num_regions


@dataclass(frozen=True)
class PixelHistogram:
    """Pixel statistics per score bin; bin ``k`` holds scores in ``[bin_lower_edges[k], next edge)``.

    ``region_overlap_weights[k]`` is ``Σ 1/size(region)`` over the defect pixels in bin ``k``.
    """

    bin_lower_edges: np.ndarray
    normal_counts: np.ndarray
    defect_counts: np.ndarray
    region_overlap_weights: np.ndarray
    num_regions: int


def accumulate_bins(
    scores: np.ndarray,
    defect: np.ndarray,
    num_bins: int,
    to_bin_index: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-bin (normal counts, defect counts, region-overlap weights, number of regions) of one set of
    maps; ``to_bin_index`` maps a 1-D chunk of scores to bin indices in ``[0, num_bins)`` (``np.intp``)."""
    flat_scores, flat_defect = scores.reshape(-1), defect.reshape(-1)
    all_counts = np.zeros(num_bins, dtype=np.intp)
    defect_bins_per_chunk = []
    for start in range(0, flat_scores.size, _CHUNK_PIXELS):
        chunk_bins = to_bin_index(flat_scores[start : start + _CHUNK_PIXELS])
        all_counts += np.bincount(chunk_bins, minlength=num_bins)
        defect_bins_per_chunk.append(chunk_bins[flat_defect[start : start + _CHUNK_PIXELS]])
    # Chunks follow the C order of the pixels, so these line up with defect_region_weights' order.
    defect_bins = np.concatenate(defect_bins_per_chunk)
    defect_counts = np.bincount(defect_bins, minlength=num_bins).astype(np.float64)
    weights, num_regions = defect_region_weights(defect)
    region_overlap_weights = np.bincount(defect_bins, weights=weights, minlength=num_bins)
    return all_counts - defect_counts, defect_counts, region_overlap_weights, num_regions


def _contents_key(score_array: np.ndarray, mask_array: np.ndarray, num_bins: int) -> tuple:
    """What the histogram depends on: the bin count and the shapes, dtypes and bytes of maps and masks."""
    key: list = [num_bins]
    for array in (score_array, mask_array):
        contiguous = np.ascontiguousarray(array)
        key += [contiguous.dtype.str, contiguous.shape, xxhash.xxh3_128_digest(contiguous)]
    return tuple(key)


_last_histogram: tuple[tuple, PixelHistogram] | None = None


def pixel_histogram(maps: ArrayLike, masks: ArrayLike, num_bins: int = DEFAULT_NUM_BINS) -> PixelHistogram:
    """Quantize the scores into ``num_bins`` equal bins over their ``[min, max]`` and accumulate the
    per-bin statistics (the one shared pass behind every pixel metric; the last result is reused for
    maps and masks with the same contents)."""
    global _last_histogram
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}.")
    score_array, mask_array = _to_numpy(maps), _to_numpy(masks)
    key = _contents_key(score_array, mask_array, num_bins)
    if _last_histogram is not None and _last_histogram[0] == key:
        return _last_histogram[1]
    scores, defect = prepare_maps_and_masks(score_array, mask_array)
    if scores.size == 0:
        raise ValueError("no pixels to evaluate: the maps are empty.")
    low, high = float(scores.min()), float(scores.max())
    bins_per_unit = (num_bins - 1) / (high - low) if high > low else 0.0
    low_in_dtype, bins_per_unit_in_dtype = scores.dtype.type(low), scores.dtype.type(bins_per_unit)

    def to_bin_index(chunk: np.ndarray) -> np.ndarray:
        # Truncation is the floor here (the shifted scores are >= 0); float32 keeps this pass cheap and the
        # rounding it may cause is monotone, so the result is still a valid quantization.
        scaled = np.subtract(chunk, low_in_dtype)
        scaled *= bins_per_unit_in_dtype
        bin_index = scaled.astype(np.intp)
        np.minimum(bin_index, num_bins - 1, out=bin_index)
        return bin_index

    normal_counts, defect_counts, region_overlap_weights, num_regions = accumulate_bins(
        scores, defect, num_bins, to_bin_index
    )
    bin_width = 1.0 / bins_per_unit if bins_per_unit else 0.0
    histogram = PixelHistogram(
        bin_lower_edges=low + bin_width * np.arange(num_bins),
        normal_counts=normal_counts,
        defect_counts=defect_counts,
        region_overlap_weights=region_overlap_weights,
        num_regions=num_regions,
    )
    for array in (histogram.bin_lower_edges, normal_counts, defect_counts, region_overlap_weights):
        array.flags.writeable = False  # the kept histogram is shared by later calls
    _last_histogram = (key, histogram)
    return histogram


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning nan.", RuntimeWarning, stacklevel=3)
    return float("nan")


def _counts_above_thresholds(counts: np.ndarray) -> np.ndarray:
    """Counts with score >= each bin's lower edge, thresholds from the highest bin down, with a leading 0
    for the threshold above every score."""
    return np.concatenate(([0.0], np.cumsum(counts[::-1])))


def _trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under the piecewise-linear curve (x non-decreasing, starting at 0) from 0 to
    ``x_limit``, the point at the limit interpolated between its neighbours."""
    end = int(np.searchsorted(x, x_limit, side="right"))
    x_kept, y_kept = x[:end], y[:end]
    if end < len(x) and x_kept[-1] < x_limit:
        fraction = (x_limit - x_kept[-1]) / (x[end] - x_kept[-1])
        y_at_limit = y_kept[-1] + fraction * (y[end] - y_kept[-1])
        x_kept, y_kept = np.append(x_kept, x_limit), np.append(y_kept, y_at_limit)
    return float(np.trapezoid(y_kept, x_kept))


def histogram_auroc(histogram: PixelHistogram) -> float:
    """Pixel AUROC of the binned scores (ties inside a bin count one half, as in sklearn)."""
    num_normal, num_defect = histogram.normal_counts.sum(), histogram.defect_counts.sum()
    if num_normal == 0 or num_defect == 0:
        return _undefined("pixel AUROC", f"{int(num_defect)} defect and {int(num_normal)} normal pixels")
    true_positive_rate = _counts_above_thresholds(histogram.defect_counts) / num_defect
    false_positive_rate = _counts_above_thresholds(histogram.normal_counts) / num_normal
    return float(np.trapezoid(true_positive_rate, false_positive_rate))


def histogram_aupro(histogram: PixelHistogram, fpr_limit: float = 0.3) -> float:
    """AUPRO of the binned scores up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD)."""
    fpr_limit = _validate_fpr_limit(fpr_limit)
    num_normal = histogram.normal_counts.sum()
    if histogram.num_regions == 0:
        return _undefined("AUPRO", "the masks contain no defect region")
    if num_normal == 0:
        return _undefined("AUPRO", "the masks contain no normal pixel, so the false-positive rate is 0/0")
    false_positive_rate = _counts_above_thresholds(histogram.normal_counts) / num_normal
    per_region_overlap = _counts_above_thresholds(histogram.region_overlap_weights) / histogram.num_regions
    return _trapezoid_up_to(false_positive_rate, per_region_overlap, fpr_limit) / fpr_limit


def histogram_f1_max(histogram: PixelHistogram) -> tuple[float, float]:
    """Best pixel F1 over the bin thresholds and the threshold (score >= threshold is anomalous)."""
    num_defect = histogram.defect_counts.sum()
    if num_defect == 0:
        return _undefined("pixel F1-max", "the masks contain no defect pixel"), float("nan")
    true_positives = np.cumsum(histogram.defect_counts[::-1])[::-1]
    predicted_positives = np.cumsum((histogram.defect_counts + histogram.normal_counts)[::-1])[::-1]
    # F1 = 2PR/(P+R) = 2 TP / (predicted positives + actual positives)
    f1_scores = 2.0 * true_positives / (predicted_positives + num_defect)
    best_bin = int(np.argmax(f1_scores))
    return float(f1_scores[best_bin]), float(histogram.bin_lower_edges[best_bin])


def histogram_iou(histogram: PixelHistogram, threshold: float) -> float:
    """IoU of ``score >= threshold`` vs the masks, the threshold snapped to the first bin edge >= it."""
    first_bin = int(np.searchsorted(histogram.bin_lower_edges, threshold, side="left"))
    intersection = histogram.defect_counts[first_bin:].sum()
    false_positives = histogram.normal_counts[first_bin:].sum()
    union = histogram.defect_counts.sum() + false_positives
    if union == 0:
        return _undefined("IoU", "neither the masks nor the thresholded maps contain a positive pixel")
    return float(intersection / union)


def pixel_metrics(
    maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, *, num_bins: int = DEFAULT_NUM_BINS
) -> dict[str, float]:
    """``pixel_auroc``, ``pixel_aupro``, ``pixel_f1_max`` and ``pixel_f1_threshold`` from one pass."""
    _validate_fpr_limit(fpr_limit)
    histogram = pixel_histogram(maps, masks, num_bins)
    f1_best, f1_threshold = histogram_f1_max(histogram)
    return {
        "pixel_auroc": histogram_auroc(histogram),
        "pixel_aupro": histogram_aupro(histogram, fpr_limit),
        "pixel_f1_max": f1_best,
        "pixel_f1_threshold": f1_threshold,
    }


def pixel_auroc(maps: ArrayLike, masks: ArrayLike, *, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """Area under the ROC curve over all pixels of all images."""
    return histogram_auroc(pixel_histogram(maps, masks, num_bins))


def aupro(
    maps: ArrayLike, masks: ArrayLike, fpr_limit: float = 0.3, *, num_bins: int = DEFAULT_NUM_BINS
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit`` (MVTec AD);
    nan with a warning when the masks have no defect region."""
    _validate_fpr_limit(fpr_limit)
    return histogram_aupro(pixel_histogram(maps, masks, num_bins), fpr_limit)


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
    return score_array.astype(np.float64), _as_binary(label_array, "labels")


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact image-level AUROC (one score per image, labels 0 normal / 1 anomalous)."""
    score_array, label_array = _image_scores_and_labels(scores, labels)
    if label_array.all() or not label_array.any():
        return _undefined("image AUROC", f"all {label_array.size} labels are {int(label_array[0])}")
    return float(roc_auc_score(label_array, score_array))


def f1_max_threshold(
    scores: ArrayLike, labels: ArrayLike, *, num_bins: int = DEFAULT_NUM_BINS
) -> tuple[float, float]:
    """Best F1 and the threshold achieving it (``score >= threshold`` is anomalous).

    One score per image (1-D ``scores``): exact, over every distinct score. Maps with masks
    (``N×H×W`` / ``N×1×H×W``): the binned pixel pass, the threshold being a bin's lower edge.
    """
    if _to_numpy(scores).ndim > 1:
        return histogram_f1_max(pixel_histogram(scores, labels, num_bins))
    score_array, label_array = _image_scores_and_labels(scores, labels)
    if not label_array.any():
        return _undefined("F1-max", "no positive label"), float("nan")
    precision, recall, thresholds = precision_recall_curve(label_array, score_array)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_scores = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1_scores))
    return float(f1_scores[best]), float(thresholds[best])


def f1_max(scores: ArrayLike, labels: ArrayLike, *, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """Best F1 over all thresholds; see :func:`f1_max_threshold`."""
    return f1_max_threshold(scores, labels, num_bins=num_bins)[0]
