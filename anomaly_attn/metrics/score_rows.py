"""Pixel counts per score interval (:class:`ScoreRows`) and every pixel metric computed from them.

A :class:`ScoreRows` table holds, in descending score order, how many normal and defect pixels score in
each interval and how many normal pixels score above it: all that AUROC, the PRO curve, F1 and IoU depend
on. The array functions build it from one sort (``exact_sort.py``: one exact row per distinct defect
score), the streaming Metrics from bounded memory, where rows can be ranges of scores; each metric here
also returns its error bound over every order of the pixels inside inexact rows (0.0 when every row is
exact).

AUPRO follows the MVTec AD definition (Bergmann et al., IJCV 2021): ground-truth regions are the
8-connected components of each mask; the per-region overlap at threshold ``t`` is the fraction of the
region's pixels with score ``>= t``; PRO is its mean over all regions of all images; the false-positive
rate counts every pixel whose mask is 0 (normal images included). PRO is integrated over FPR with the
trapezoid rule from 0 to ``fpr_limit`` (the point at the limit is interpolated) and divided by
``fpr_limit`` -- not by the last FPR reached, which is anomalib's normalization bug.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from anomaly_attn.metrics.inputs import _validate_fpr_limit


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
