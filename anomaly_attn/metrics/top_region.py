"""Exact AUPRO and F1-max from the top of the score ranking, without sorting every pixel.

``aupro`` only needs the normal pixels with a false-positive rate up to ``fpr_limit`` and ``f1_max`` only
the top of the ranking: a strided sample of the scores proposes a score above which the exact part lies,
only the pixels above it are sorted, and the bound of the rest is checked (``0`` required, else the region
is widened, up to all pixels). Inputs of at most ``_SMALL_INPUT_PIXELS`` are sorted whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from anomaly_attn.metrics.exact_sort import _run_starts, exact_rows
from anomaly_attn.metrics.inputs import ArrayLike, prepare_maps_and_masks
from anomaly_attn.metrics.regions import defect_region_sizes
from anomaly_attn.metrics.score_rows import _undefined, rows_aupro, rows_f1_max

# Inputs up to this many pixels are sorted whole: sampling a sub-region would save nothing.
_SMALL_INPUT_PIXELS = 2**18

# Scores sampled (strided) to propose the exact region of aupro and f1_max; a region holding more than
# this fraction of the pixels is not worth the proposal.
_SAMPLE_SIZE = 2**16
_MAX_REGION_FRACTION = 0.6


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
