"""Anomaly-detection metrics on whole arrays: image AUROC / F1-max, pixel AUROC, AUPRO, F1-max, IoU.

Every function here is exact: it returns the sort-based definition (scikit-learn's ``roc_auc_score`` and
``precision_recall_curve``, the MVTec AD AUPRO) up to float64 rounding in the final sums (< 1e-12), for any
finite scores -- outliers, heavy tails, ties, constant maps, 1e-30 next to 1e30; ``pixel_metrics``
reports it as ``error_bound = 0.0`` (the streaming Metric's bound can be positive). Pixel functions take
anomaly maps (``N×H×W`` or ``N×1×H×W``, numpy or torch) and binary ground-truth masks of the same shape; a
NaN or inf in a map is an error naming the image.

How (one sort, no histogram): the defect pixels (a few percent of all pixels) are sorted with their AUPRO
weights and grouped by distinct score; the normal pixels are sorted too, and ``np.searchsorted`` gives for
every distinct defect score the number of normal pixels below and equal to it. Those counts are all that
AUROC, the PRO curve and F1 depend on: one :class:`ScoreRows` table, in descending score order, from which
every metric and its error bound are computed (the streaming Metrics build the same table from bounded
memory, where rows can be ranges of scores and the bound can be positive).

Cost and memory: ``pixel_auroc`` and ``pixel_metrics`` sort every normal pixel (about one ``np.sort``).
``aupro`` only needs the normal pixels with a false-positive rate up to ``fpr_limit`` and ``f1_max`` only
the top of the ranking: a strided sample of the scores proposes a score above which the exact part lies,
only the pixels above it are sorted, and the bound of the rest is checked (``0`` required, else the region
is widened). Normal pixels are sorted in slices of at most ``SORT_CHUNK_PIXELS`` (2^25, 128 MB of float32
scores), so a whole 1024² MVTec category (100-170 M pixels) costs that slice, the defect pixels (24 bytes
each while sorted) and the masks' bookkeeping, never a second copy of the maps.

AUPRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): ground-truth regions are the
8-connected components of each mask; the per-region overlap at threshold ``t`` is the fraction of the
region's pixels with score ``>= t``; PRO is its mean over all regions of all images; the false-positive
rate counts every pixel whose mask is 0 (normal images included). PRO is integrated over FPR with the
trapezoid rule from 0 to ``fpr_limit`` (the point at the limit is interpolated) and divided by
``fpr_limit`` -- not by the last FPR reached, which is anomalib's normalization bug.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

ArrayLike = np.ndarray | torch.Tensor

# Cells of the streaming Metric's bounded memory (metrics/cells.py), 33 bytes each.
DEFAULT_NUM_BINS = 2**20

# Normal pixels sorted at once (float32: 128 MB); larger inputs are sorted slice by slice.
SORT_CHUNK_PIXELS = 2**25

# Inputs up to this many pixels are sorted whole: sampling a sub-region would save nothing.
_SMALL_INPUT_PIXELS = 2**18

# Scores sampled (strided) to propose the exact region of aupro and f1_max; a region holding more than
# this fraction of the pixels is not worth the proposal.
_SAMPLE_SIZE = 2**16
_MAX_REGION_FRACTION = 0.6

# Ground-truth regions are 8-connected (MVTec AD): diagonal neighbours belong to the same region.
_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        return values.numpy()
    values = np.asarray(values)
    if values.dtype.kind == "f" and values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float32)  # float16: float32 holds it exactly
    return values


def _as_binary(values: np.ndarray, name: str) -> np.ndarray:
    """Boolean view of 0/1 ground truth; anything else (resized or JPEG masks) is an error, not rounded."""
    if values.dtype == bool:
        return values
    is_one = values == 1
    # Binary exactly when every value is a 0 or a 1 (NaN is neither): two compares, two cheap counts
    # (counting the nonzero floats directly is several times slower than a compare).
    if np.count_nonzero(is_one) + np.count_nonzero(values == 0) != values.size:
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


def _warn_num_bins_ignored(num_bins: int | None) -> None:
    if num_bins is not None:
        warnings.warn(
            "num_bins is ignored by the array functions: they are exact now (no bins); drop the argument.",
            DeprecationWarning,
            stacklevel=3,
        )


def check_finite(scores: np.ndarray, what: str = "anomaly maps") -> None:
    """Raise if any score is NaN or inf, naming the images (indices along the first axis) that hold them."""
    if scores.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(scores, axis=None)
    if math.isfinite(total):
        return  # a sum propagates NaN and inf: one cheap pass decides the common case
    per_image = scores.reshape(len(scores), -1) if scores.ndim > 1 else scores.reshape(-1, 1)
    bad_images = np.flatnonzero(~np.isfinite(per_image).all(axis=1))
    if bad_images.size == 0:
        return  # finite scores whose sum overflowed (values near the float maximum)
    counts = ", ".join(
        f"index {int(i)}: {int(np.isnan(per_image[i]).sum())} NaN, {int(np.isinf(per_image[i]).sum())} inf"
        for i in bad_images[:10]
    )
    more = f" and {len(bad_images) - 10} more" if len(bad_images) > 10 else ""
    raise ValueError(
        f"{what} contain NaN/inf at {len(bad_images)} of {len(per_image)} images ({counts}{more}); "
        "metrics are undefined for them: fix the map computation (e.g. a division by a zero norm) or "
        "drop those images."
    )


def prepare_maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(scores N×H×W float, defect N×H×W bool)`` from maps/masks given as ``H×W``, ``N×H×W`` or
    ``N×1×H×W`` numpy arrays or torch tensors; raise on shape mismatch, NaN/inf scores (naming the
    image) or non-binary masks."""
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
    check_finite(score_array)
    return score_array, _as_binary(mask_array, "masks")


def defect_region_sizes(defect: np.ndarray) -> tuple[np.ndarray, int]:
    """For every defect pixel of the ``N×H×W`` boolean ``defect`` (in ``defect[defect]`` order) the size
    of its 8-connected region, and the number of regions."""
    rows_with_defect, columns_with_defect = defect.any(axis=2), defect.any(axis=1)
    sizes_per_image, num_regions = [np.zeros(0, dtype=np.int64)], 0
    for image_index in np.flatnonzero(rows_with_defect.any(axis=1)):
        # Labelling only the bounding box of the defect pixels is ~3x cheaper and keeps their order.
        rows, columns = (
            np.flatnonzero(rows_with_defect[image_index]),
            np.flatnonzero(columns_with_defect[image_index]),
        )
        defect_crop = defect[image_index, rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
        region_labels, num_image_regions = ndimage.label(defect_crop, structure=_EIGHT_CONNECTIVITY)
        labels_of_defect_pixels = region_labels[defect_crop]
        sizes_per_image.append(np.bincount(labels_of_defect_pixels)[labels_of_defect_pixels])
        num_regions += num_image_regions
    return np.concatenate(sizes_per_image), num_regions


def defect_region_weights(defect: np.ndarray) -> tuple[np.ndarray, int]:
    """For every defect pixel (in ``defect[defect]`` order) return ``1 / size`` of its 8-connected region
    and the number of regions. Summing the weights of the pixels above a threshold gives
    ``Σ_regions overlap_region(t)`` -- the additive form of PRO that needs no per-region bookkeeping."""
    sizes, num_regions = defect_region_sizes(defect)
    return 1.0 / sizes, num_regions


# ----------------------------------------------------------------------------------- score rows
@dataclass(frozen=True)
class ScoreRows:
    """Pixel counts in disjoint score intervals ("rows"), highest scores first.

    Row ``k`` holds ``normals[k]`` normal and ``defects[k]`` defect pixels (``overlap_weights[k]`` is
    ``Σ 1/size(region)`` over those defect pixels); ``normals_above[k]`` normal pixels score above every
    pixel of the row (rows need not cover normal pixels that no metric has to split). Every score of the
    row lies in ``[lower[k], upper[k]]``, and ``score >= lower[k]`` selects exactly this row and those
    above it. ``exact[k]``: all pixels of the row share one score (a tie); otherwise the order inside
    the row is unknown, and the metrics' error bounds account for every ordering of it.
    """

    normals_above: np.ndarray
    normals: np.ndarray
    defects: np.ndarray
    overlap_weights: np.ndarray
    exact: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    num_normal: int
    num_defect: int
    num_regions: int


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning nan.", RuntimeWarning, stacklevel=3)
    return float("nan")


def rows_auroc(rows: ScoreRows) -> tuple[float, float]:
    """Pixel AUROC (ties count one half, as in scikit-learn) and its error bound.

    Mann-Whitney: ``AUROC = Σ_rows defects · (normals below + normals in the row / 2) / (P · N)``, in exact
    integer arithmetic. Pairs inside an inexact row count one half; the truth is 0 or 1 for each, so the
    error is at most ``Σ_inexact defects · normals / (2 P N)``.
    """
    num_normal, num_defect = rows.num_normal, rows.num_defect
    if num_normal == 0 or num_defect == 0:
        return _undefined("pixel AUROC", f"{num_defect} defect and {num_normal} normal pixels"), 0.0
    defects, normals = rows.defects.astype(np.int64), rows.normals.astype(np.int64)
    normals_below = num_normal - rows.normals_above.astype(np.int64) - normals
    twice_pairs_won = int(np.dot(defects, 2 * normals_below + normals))
    value = twice_pairs_won / (2.0 * num_defect * num_normal)
    uncertain_pairs = float(np.dot(rows.defects[~rows.exact], rows.normals[~rows.exact]))
    return value, uncertain_pairs / (2.0 * num_defect * num_normal)


def rows_f1_max(rows: ScoreRows) -> tuple[float, float, float]:
    """Best F1 over all thresholds, a threshold achieving it (``score >= threshold``) and the error bound.

    F1 only peaks where a threshold admits defect pixels, i.e. at a row's lower edge. Inside an inexact
    row the best conceivable order puts all its defects first: ``2 TP / (TP + normals above + P)`` bounds
    every threshold inside it, so the bound is how far that exceeds the reported maximum.
    """
    num_defect = rows.num_defect
    if num_defect == 0:
        return _undefined("F1-max", "the labels contain no defect / positive"), float("nan"), 0.0
    true_positives = np.cumsum(rows.defects)
    # F1 = 2PR/(P+R) = 2 TP / (predicted positives + actual positives)
    predicted_positives = true_positives + rows.normals_above + rows.normals
    f1_scores = 2.0 * true_positives / (predicted_positives + num_defect)
    best_row = int(np.argmax(f1_scores))
    best = float(f1_scores[best_row])
    inexact = ~rows.exact & (rows.defects > 0)
    bound = 0.0
    if inexact.any():
        true_positives_inside = true_positives[inexact]
        optimistic = 2.0 * true_positives_inside / (
            true_positives_inside + rows.normals_above[inexact] + num_defect
        )
        bound = max(0.0, float(optimistic.max()) - best)
    return best, float(rows.lower[best_row]), bound


def rows_aupro(rows: ScoreRows, fpr_limit: float = 0.3) -> tuple[float, float]:
    """AUPRO up to ``fpr_limit`` divided by ``fpr_limit`` (MVTec AD) and its error bound.

    The (FPR, PRO) curve runs from (0, 0) through each row: flat from the previous row's end to the row's
    start (only normal pixels in between), then straight to the row's end (its normal pixels and weights
    added); flat again after the last row, to FPR 1. The trapezoid area up to the limit is summed piece by
    piece, the one piece that crosses the limit cut at its interpolated point, as in the reference. An exact
    row is one threshold, a straight piece as in the reference; inside an inexact row the true curve is a
    monotone path in the row's rectangle, so its area up to the limit differs by at most the rectangle's.
    """
    fpr_limit = _validate_fpr_limit(fpr_limit)
    if rows.num_regions == 0:
        return _undefined("AUPRO", "the masks contain no defect region"), 0.0
    if rows.num_normal == 0:
        reason = "the masks contain no normal pixel, so the false-positive rate is 0/0"
        return _undefined("AUPRO", reason), 0.0
    fpr_start = rows.normals_above / rows.num_normal
    fpr_end = rows.normals / rows.num_normal
    fpr_end += fpr_start
    overlap_step = rows.overlap_weights / rows.num_regions
    overlap_start = np.cumsum(overlap_step)
    final_overlap = float(overlap_start[-1]) if overlap_start.size else 0.0
    overlap_start -= overlap_step
    # Flat pieces: from the previous row's end (0 for the first) to each row's start, then after the last.
    clipped_start, clipped_end = np.minimum(fpr_start, fpr_limit), np.minimum(fpr_end, fpr_limit)
    area = float(np.dot(overlap_start[1:], clipped_start[1:] - clipped_end[:-1])) if fpr_start.size else 0.0
    if fpr_start.size:
        area += float(overlap_start[0] * clipped_start[0])
    area += final_overlap * (fpr_limit - (float(clipped_end[-1]) if clipped_end.size else 0.0))
    # Straight pieces through the rows up to the limit; rows are consecutive, so one at most crosses it.
    widths = np.maximum(clipped_end - fpr_start, 0.0, out=clipped_end)
    area += float(np.dot(widths, overlap_start)) + float(np.dot(widths, overlap_step)) / 2.0
    crossing = np.flatnonzero((fpr_start < fpr_limit) & (fpr_end > fpr_limit))
    if crossing.size:
        row = int(crossing[0])
        fraction = (fpr_limit - fpr_start[row]) / (fpr_end[row] - fpr_start[row])
        # The piece was counted up to the limit with its end height; use the height at the limit.
        area -= widths[row] * overlap_step[row] * (1.0 - fraction) / 2.0
    inexact = ~rows.exact
    bound = float(np.dot(widths[inexact], overlap_step[inexact])) / fpr_limit
    return area / fpr_limit, bound


def rows_iou(rows: ScoreRows, threshold: float) -> tuple[float, float]:
    """IoU of ``score >= threshold`` vs the masks, and its error bound (``rows`` must cover every pixel).

    Rows wholly at or above the threshold count; a row the threshold cuts (only an inexact one can be)
    is left out, and the bound spans every split of it: between ``I / (U + its normals)`` and
    ``(I + its defects) / U``.
    """
    included = rows.lower >= threshold
    cut = ~included & ~rows.exact & (rows.upper >= threshold)
    intersection = float(rows.defects[included].sum())
    union = rows.num_defect + float(rows.normals[included].sum())
    if union == 0:
        return _undefined("IoU", "neither the masks nor the thresholded maps contain a positive pixel"), 0.0
    value = intersection / union
    cut_normals, cut_defects = float(rows.normals[cut].sum()), float(rows.defects[cut].sum())
    bound = max(value - intersection / (union + cut_normals), (intersection + cut_defects) / union - value)
    return value, bound


# ----------------------------------------------------------------------------------- exact rows
def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    """Start index of every run of equal values in a sorted array."""
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


def _sort_with_region_sizes(scores: np.ndarray, region_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` sorted, with the region sizes in the same order.

    float32 scores widened to float64 leave 29 low mantissa bits zero: the size is packed there and one
    float64 sort (SIMD, ~5x cheaper than ``argsort``) orders both. The packed bits move a value by less
    than the gap to the next float32, so the order of the scores is unchanged; unpacking restores them.
    """
    if scores.dtype != np.float32 or (region_sizes.size and int(region_sizes.max()) >= 2**29):
        order = np.argsort(scores)
        return scores[order], region_sizes[order]
    packed = scores.astype(np.float64).view(np.int64)
    packed |= region_sizes
    packed = np.sort(packed.view(np.float64)).view(np.int64)
    sizes = packed & (2**29 - 1)
    packed &= ~np.int64(2**29 - 1)
    return packed.view(np.float64).astype(np.float32), sizes


def exact_rows_from_parts(
    normal_chunks: Iterable[np.ndarray],
    defect_scores: np.ndarray,
    defect_region_sizes: np.ndarray | None,
    num_normal: int,
    num_regions: int = 0,
    region_lower: float | None = None,
    all_scores: np.ndarray | None = None,
) -> ScoreRows:
    """Exact :class:`ScoreRows`: one exact row per distinct defect score (with its normal pixels of equal
    score), the normal pixels between them counted in ``normals_above``.

    ``normal_chunks`` yields the normal scores (each chunk is sorted in place: pass copies) -- all of them,
    or with ``region_lower`` only those ``>= region_lower``; ``num_normal`` counts all.
    ``defect_region_sizes``: the size of the ground-truth region of each defect pixel, for AUPRO's weights
    (``None``: not needed). With ``region_lower`` only pixels at or above it are resolved; everything below
    forms one inexact last row, whose error bound shows what that leaves open. ``all_scores``: a copy of
    every score, defects included, that ``normal_chunks`` yields as its only chunk (no region).
    """
    num_defect = defect_scores.size
    below_defects, below_weight = 0, 0.0
    if region_lower is not None:
        in_region = defect_scores >= region_lower
        below_defects = num_defect - int(np.count_nonzero(in_region))
        if defect_region_sizes is not None:
            below_weight = float((1.0 / defect_region_sizes[~in_region]).sum())
            defect_region_sizes = defect_region_sizes[in_region]
        defect_scores = defect_scores[in_region]
    if defect_region_sizes is None:
        sorted_scores, weight_sums = np.sort(defect_scores), None
        run_starts = _run_starts(sorted_scores)
    else:
        sorted_scores, sorted_sizes = _sort_with_region_sizes(defect_scores, defect_region_sizes)
        run_starts = _run_starts(sorted_scores)
        weight_sums = np.add.reduceat(1.0 / sorted_sizes, run_starts) if run_starts.size else np.zeros(0)
        del sorted_sizes  # the per-pixel arrays go before the per-score ones are built (1024² maps)
    distinct_scores = sorted_scores[run_starts]
    defect_counts = np.diff(run_starts, append=sorted_scores.size)
    del sorted_scores
    normals_below = np.zeros(distinct_scores.size, dtype=np.int64)
    normals_equal = np.zeros(distinct_scores.size, dtype=np.int64)
    normals_in_region = 0
    for chunk in normal_chunks:
        # A chunk of all scores, defects included (one sort instead of a gather and a sort), holds
        # every defect pixel: those below and at each distinct score are known from the defects' sort.
        if chunk is all_scores:
            _count_normals(chunk, distinct_scores, run_starts, defect_counts, normals_below, normals_equal)
            normals_in_region += chunk.size - num_defect
        else:
            _count_normals(chunk, distinct_scores, 0, 0, normals_below, normals_equal)
            normals_in_region += chunk.size
    del run_starts
    # Highest score first; the pixels below the region (if any) as one inexact last row.
    normals_below_region = num_normal - normals_in_region
    has_below_row = bool(normals_below_region or below_defects)
    num_rows = distinct_scores.size + has_below_row
    normals_above, normals, defects, weights = (np.empty(num_rows) for _ in range(4))
    normals_below += normals_equal
    np.subtract(normals_in_region, normals_below[::-1], out=normals_above[: distinct_scores.size])
    normals[: distinct_scores.size] = normals_equal[::-1]
    defects[: distinct_scores.size] = defect_counts[::-1]
    weights[: distinct_scores.size] = 0.0 if weight_sums is None else weight_sums[::-1]
    lower = np.empty(num_rows)
    lower[: distinct_scores.size] = distinct_scores[::-1]
    upper = lower.copy()
    exact = np.ones(num_rows, dtype=bool)
    if has_below_row:
        normals_above[-1], normals[-1], defects[-1], weights[-1] = (
            normals_in_region, normals_below_region, below_defects, below_weight
        )
        exact[-1], lower[-1], upper[-1] = False, -np.inf, np.nextafter(region_lower, -np.inf)
    return ScoreRows(
        normals_above, normals, defects, weights, exact, lower, upper, num_normal, num_defect, num_regions
    )


def _count_normals(
    chunk: np.ndarray,
    distinct_scores: np.ndarray,
    defects_below: np.ndarray | int,
    defects_at: np.ndarray | int,
    normals_below: np.ndarray,
    normals_equal: np.ndarray,
) -> None:
    """Add the normal pixels of ``chunk`` below and equal to each of the sorted ``distinct_scores`` to
    ``normals_below`` / ``normals_equal`` (sorting ``chunk`` in place). ``defects_below``/``defects_at``:
    the defect pixels the chunk holds below / at each score (0 for chunks of normal pixels only)."""
    chunk.sort()
    below = np.searchsorted(chunk, distinct_scores, side="left")
    normals_below += below
    normals_below -= defects_below
    if chunk.size == 0:
        return
    # Ties between normal and defect scores are rare in real maps: search again only where one is (the
    # first score after the tied defects still equals theirs).
    after = below + defects_at
    tied = after < chunk.size
    tied[tied] = chunk[after[tied]] == distinct_scores[tied]
    tied = np.flatnonzero(tied)
    normals_equal[tied] += np.searchsorted(chunk, distinct_scores[tied], side="right") - after[tied]


def exact_rows(
    scores: np.ndarray,
    defect: np.ndarray,
    region_sizes: np.ndarray | None = None,
    num_regions: int = 0,
    region_lower: float | None = None,
) -> ScoreRows:
    """:func:`exact_rows_from_parts` of ``scores`` (any shape) vs the boolean ``defect`` of the same shape
    (``region_sizes`` in ``scores[defect]`` order); normal pixels are gathered and sorted in slices of at
    most ``SORT_CHUNK_PIXELS``."""
    flat_scores, flat_defect = scores.reshape(-1), defect.reshape(-1)
    defect_scores = flat_scores[flat_defect]

    def normal_chunks() -> Iterator[np.ndarray]:
        for start in range(0, flat_scores.size, SORT_CHUNK_PIXELS):
            chunk_scores = flat_scores[start : start + SORT_CHUNK_PIXELS]
            chunk_defect = flat_defect[start : start + SORT_CHUNK_PIXELS]
            if region_lower is None:
                yield chunk_scores[~chunk_defect]
            else:
                selected = chunk_scores >= region_lower
                selected[chunk_defect] = False  # cheaper than a second full-size mask and an "and"
                yield chunk_scores[selected]

    num_normal = flat_scores.size - defect_scores.size
    if region_lower is None and flat_scores.size <= SORT_CHUNK_PIXELS:
        all_scores = flat_scores.copy()
        return exact_rows_from_parts(
            [all_scores], defect_scores, region_sizes, num_normal, num_regions, all_scores=all_scores
        )
    return exact_rows_from_parts(
        normal_chunks(), defect_scores, region_sizes, num_normal, num_regions, region_lower
    )


def _strided_sample(flat_scores: np.ndarray, flat_defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, flat_scores.size // _SAMPLE_SIZE)
    return flat_scores[::step], flat_defect[::step]


def _sample_quantile(sorted_sample: np.ndarray, top_fraction: float) -> float | None:
    """The sampled score with about ``top_fraction`` of the sample at or above it; None: everything."""
    if top_fraction >= _MAX_REGION_FRACTION or sorted_sample.size < 256:
        return None
    return float(sorted_sample[int((1.0 - top_fraction) * (sorted_sample.size - 1))])


def _aupro_region_proposals(
    flat_scores: np.ndarray, flat_defect: np.ndarray, fpr_limit: float
) -> list[float]:
    """Scores above which AUPRO is probably exact, narrowest first: the normal-pixel quantile at FPR
    ``fpr_limit`` in the sample, lowered by four standard errors of that estimate (and once more)."""
    sample_scores, sample_defect = _strided_sample(flat_scores, flat_defect)
    normal_sample = np.sort(sample_scores[~sample_defect])
    margin = 0.005 + 4.0 * math.sqrt(fpr_limit * (1.0 - fpr_limit) / max(normal_sample.size, 1))
    fprs = (fpr_limit + margin, 1.5 * fpr_limit + 2 * margin)
    proposals = [_sample_quantile(normal_sample, fpr) for fpr in fprs]
    return [proposal for proposal in proposals if proposal is not None]


def _f1_region_proposals(flat_scores: np.ndarray, flat_defect: np.ndarray, num_defect: int) -> list[float]:
    """Scores above which F1-max is probably exact, narrowest first.

    No threshold below a score ``t`` can beat ``F1*`` once ``2P / (2P + normal pixels >= t) <= F1*`` (below
    ``t``, TP is at most P and FP at least those normal pixels), i.e. once at most ``P (2 / F1* - 1)``
    pixels score ``>= t``; the sample's own F1 curve estimates ``F1*`` (with a 10 % margin).
    """
    sample_scores, sample_defect = _strided_sample(flat_scores, flat_defect)
    sorted_sample = np.sort(sample_scores)
    defect_sample = np.sort(sample_scores[sample_defect])[::-1]
    defect_fraction = num_defect / flat_scores.size
    if defect_sample.size == 0:
        fraction = 20 * defect_fraction
    else:
        sample_true_positives = np.arange(1, defect_sample.size + 1)
        sample_predicted = sorted_sample.size - np.searchsorted(sorted_sample, defect_sample, side="left")
        sample_f1 = 2.0 * sample_true_positives / (sample_predicted + defect_sample.size)
        fraction = defect_fraction * (2.0 / (0.9 * float(sample_f1.max())) - 1.0)
    fraction += 0.005
    proposals = [_sample_quantile(sorted_sample, fraction), _sample_quantile(sorted_sample, 4 * fraction)]
    return [proposal for proposal in proposals if proposal is not None]


@dataclass
class _Pixels:
    """Validated scores and defect mask, flattened, with the defect regions labelled once when needed."""

    scores: np.ndarray
    defect: np.ndarray
    image_shaped_defect: np.ndarray | None = None
    _regions: tuple[np.ndarray, int] | None = None

    @property
    def regions(self) -> tuple[np.ndarray, int]:
        """Region size of every defect pixel and the number of regions (computed on first use)."""
        if self._regions is None:
            self._regions = defect_region_sizes(self.image_shaped_defect)
        return self._regions

    @classmethod
    def from_maps(cls, maps: ArrayLike, masks: ArrayLike) -> _Pixels:
        scores, defect = prepare_maps_and_masks(maps, masks)
        if scores.size == 0:
            raise ValueError("no pixels to evaluate: the maps are empty.")
        return cls(scores.reshape(-1), defect.reshape(-1), image_shaped_defect=defect)


def _exact_aupro(pixels: _Pixels, fpr_limit: float) -> float:
    """AUPRO from the pixels above the first proposed score whose rows leave its bound at 0 (the region
    reaches past FPR ``fpr_limit``); from all pixels when no proposal does (or the input is small)."""
    region_sizes, num_regions = pixels.regions
    if pixels.scores.size > _SMALL_INPUT_PIXELS:
        for region_lower in _aupro_region_proposals(pixels.scores, pixels.defect, fpr_limit):
            rows = exact_rows(pixels.scores, pixels.defect, region_sizes, num_regions, region_lower)
            value, bound = rows_aupro(rows, fpr_limit)
            if bound == 0.0:
                return value
    return rows_aupro(exact_rows(pixels.scores, pixels.defect, region_sizes, num_regions), fpr_limit)[0]


def _f1_in_region(pixels: _Pixels, region_lower: float, num_defect: int) -> tuple[float, float] | None:
    """Exact F1-max and its threshold from the pixels scoring ``>= region_lower``, or None when a lower
    threshold might beat it (then the region was too small).

    F1 only peaks at a defect score ``u`` (``TP(u)`` defect and ``FP(u)`` normal pixels at or above it).
    ``FP`` comes from a search among the sorted normal scores, first at every ``stride``-th defect score
    only: between two of them no F1 can exceed ``2 TP(lower) / (TP(lower) + FP(upper) + P)``, so only the
    stretches where that reaches the best value found are searched in full.
    """
    # One scan finds the region (a small part of the pixels); its scores split by label from there.
    in_region = np.flatnonzero(pixels.scores >= region_lower)
    region_scores, region_defect = pixels.scores[in_region], pixels.defect[in_region]
    normal_scores = np.sort(region_scores[~region_defect])
    defect_scores = np.sort(region_scores[region_defect])[::-1]
    run_starts = _run_starts(defect_scores)
    if run_starts.size == 0:
        return None
    candidates = defect_scores[run_starts]
    true_positives = np.r_[run_starts[1:], defect_scores.size].astype(np.float64)

    def false_positives_at(indices: np.ndarray) -> np.ndarray:
        return normal_scores.size - np.searchsorted(normal_scores, candidates[indices], side="left")

    def f1(indices: np.ndarray, false_positives: np.ndarray) -> np.ndarray:
        return 2.0 * true_positives[indices] / (true_positives[indices] + false_positives + num_defect)

    stride = max(1, candidates.size // 512)
    coarse = np.unique(np.r_[np.arange(0, candidates.size, stride), candidates.size - 1])
    coarse_false_positives = false_positives_at(coarse)
    coarse_f1 = f1(coarse, coarse_false_positives)
    # Between coarse candidates i < j: TP <= TP(j) and FP >= FP(i).
    ceilings = f1(coarse[1:], coarse_false_positives[:-1])
    best = float(coarse_f1.max())
    stretches = [
        np.arange(start + 1, stop)
        for start, stop, ceiling in zip(coarse[:-1], coarse[1:], ceilings, strict=True)
        if stop > start + 1 and ceiling >= best * (1 - 1e-12)
    ]
    evaluated = np.concatenate([coarse, *stretches])
    evaluated_f1 = np.concatenate([coarse_f1, *(f1(part, false_positives_at(part)) for part in stretches)])
    best = float(evaluated_f1.max())
    # Below the region: TP <= P and FP >= the region's normal pixels, so F1 <= 2P / (2P + those).
    if 2.0 * num_defect / (2.0 * num_defect + normal_scores.size) > best:
        return None  # a threshold below the region could still do better
    best_candidate = int(evaluated[evaluated_f1 == best].min())  # the highest threshold, as rows_f1_max
    return best, float(candidates[best_candidate])


def _f1_max_threshold(pixels: _Pixels) -> tuple[float, float]:
    num_defect = int(np.count_nonzero(pixels.defect))
    if num_defect == 0:
        return _undefined("F1-max", "the labels contain no defect / positive"), float("nan")
    if pixels.scores.size > _SMALL_INPUT_PIXELS:
        for region_lower in _f1_region_proposals(pixels.scores, pixels.defect, num_defect):
            found = _f1_in_region(pixels, region_lower, num_defect)
            if found is not None:
                return found
    best, threshold, _ = rows_f1_max(exact_rows(pixels.scores, pixels.defect))
    return best, threshold


# ----------------------------------------------------------------------------------- public functions
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

