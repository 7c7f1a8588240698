"""Per-image parts of the pixel metrics (:class:`PixelParts`): all that an image-level bootstrap resample
needs to recompute pixel AUROC, AUPRO and F1-max without touching the pixels again.

Pixel AUROC of a resample that draws image ``i`` ``w_i`` times is ``w·pairs·w / ((w·P)(w·N))`` where
``pairs[i, j]`` counts the (defect pixel of image ``i``, normal pixel of image ``j``) pairs won by the
defect pixel, ties one half (scikit-learn's and ``functional.pixel_auroc``'s convention). ``pairs`` is
exact, from one sort of all pixels: float32 scores widened to float64 leave 29 mantissa bits zero, where
the image index and a flag are packed (the trick of ``exact_sort.py``), so one ``np.sort`` orders scores,
images and labels together, normal pixels first inside every tie. Then ``pairs = A - T / 2``: ``A[i, j]``
(normal pixels of ``j`` before each defect pixel of ``i`` in the sorted order) comes from prefix
histograms of the normal pixels' images, ``T`` (pairs tied in score) from the ties holding both kinds.

AUPRO and F1-max need the whole curve of a resample, so they are kept per image on a threshold grid:
normal pixels at or above each threshold (false positives), defect pixels at or above it (true positives)
and the summed per-region overlap (the additive form of PRO, regions 8-connected as in ``regions.py``).
The grid (at most ``grid`` scores) holds normal-pixel quantiles evenly spaced in FPR up to 1.5 ×
``fpr_limit``, defect-pixel quantiles, pixel-count quantiles over the top of the ranking where the
unit-weight F1 is within 70 % of its maximum (25 % margin each side), the exact F1-max threshold of the
whole test set and the extreme scores; with at most ``grid`` distinct scores (quantized maps) it is every
distinct score, and both metrics are exact for every resample. Otherwise, between two grid thresholds with
scores between them, the true PRO curve is a monotone path inside the rectangle the two points span, so
linear interpolation (the MVTec AD trapezoid) is off by at most half its area (the whole area for the
piece cut at the limit), and no F1 between them exceeds ``2 TP(lower) / (TP(lower) + FP(upper) + P)``:
:func:`grid_metrics` returns these bounds with every value, :class:`PixelParts` records them at unit
weights.

Memory while building: about 28 bytes per pixel at the peak (186 MB for 100 maps of 256²), meant for maps
of at most ~256² (``interval_inputs.py`` area-downsamples to that); the parts themselves are
``O(n² + n G)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from anomaly_attn.metrics.regions import defect_region_sizes

# float32 scores widened to float64 leave 29 low mantissa bits zero: the image index goes in the low 28,
# bit 28 orders normal pixels before defect pixels inside a tie.
_LOW_BITS = np.int64(2**29 - 1)
_IMAGE_BITS = np.int64(2**28 - 1)
_ORDER_SHIFT = 28
# Prefix-count rows × images held at once (16 MB of int64).
_CHUNK_ENTRIES = 2**21
# The share of the grid spent on FPR-spaced normal quantiles, on defect quantiles, and on the top of the
# ranking (the rest); FPR-spaced points reach this multiple of fpr_limit, top points this multiple of the
# pixels above the lowest threshold that could still reach the unit-weight F1-max.
_FPR_SHARE, _DEFECT_SHARE = 0.45, 0.15
_FPR_REACH, _TOP_REACH = 1.5, 1.25
_F1_NEAR = 0.7


@dataclass(frozen=True)
class _Stream:
    """Every pixel in ascending score order (normal pixels first inside a tie), split by label."""

    values: np.ndarray  # float64, sorted
    defect: np.ndarray  # bool, in the same order
    defect_positions: np.ndarray  # where the defect pixels are
    normal_images: np.ndarray  # the image of each normal pixel, in order
    defect_images: np.ndarray  # the image of each defect pixel, in order

    def normals_before(self, positions: np.ndarray) -> np.ndarray:
        """Normal pixels before each (sorted-order) position."""
        return positions - np.searchsorted(self.defect_positions, positions, side="left")


def _read_images(maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The maps as 2-D finite float arrays and the masks as booleans of the same shapes, one per image."""
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} maps but {len(masks)} masks.")
    scores, defects = [], []
    for index, (score_map, mask) in enumerate(zip(maps, masks, strict=True)):
        score_map, mask = np.asarray(score_map), np.asarray(mask)
        score_map = score_map[0] if score_map.ndim == 3 and score_map.shape[0] == 1 else score_map
        mask = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
        if score_map.ndim != 2 or score_map.shape != mask.shape:
            raise ValueError(f"image {index}: map {score_map.shape} and mask {mask.shape} must be one H×W.")
        if not np.isfinite(score_map).all():
            raise ValueError(f"image {index}: the map holds NaN or inf scores.")
        if mask.dtype != bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError(f"image {index}: the mask must hold only 0 and 1.")
            mask = mask == 1
        scores.append(score_map)
        defects.append(mask)
    if not scores:
        raise ValueError("no images to evaluate.")
    return scores, defects


def _fits_float32(score_map: np.ndarray) -> bool:
    if score_map.dtype in (np.float32, np.float16, np.uint8, np.int8, np.uint16, np.int16, np.bool_):
        return True
    return score_map.dtype == np.float64 and bool(np.array_equal(score_map.astype(np.float32), score_map))


def _sorted_stream(scores: list[np.ndarray], defects: list[np.ndarray]) -> _Stream:
    """One sort of every pixel (see the module docstring); ``-0.0`` counts as ``0.0``."""
    offsets = np.cumsum([0] + [score_map.size for score_map in scores])
    if len(scores) <= 2**28 and all(_fits_float32(score_map) for score_map in scores):
        packed = np.empty(int(offsets[-1]), dtype=np.int64)
        as_float = packed.view(np.float64)
        for image, (score_map, mask) in enumerate(zip(scores, defects, strict=True)):
            pixels = slice(offsets[image], offsets[image + 1])
            part, bits = as_float[pixels], packed[pixels]
            part[...] = score_map.astype(np.float32, copy=False).ravel()
            part += 0.0  # -0.0 -> 0.0
            # Inside a tie a larger low part sorts later for positive scores, earlier for negative ones.
            later = mask.ravel() != (part < 0)
            bits |= image
            bits |= later.astype(np.int64) << _ORDER_SHIFT
        as_float.sort()
        low = packed & _LOW_BITS
        packed ^= low
        values = packed.view(np.float64)
        images = (low & _IMAGE_BITS).astype(np.int32)
        defect = (low >> _ORDER_SHIFT).astype(bool) != (values < 0)
    else:  # scores float32 cannot hold: sort indices (slower, same result)
        values = np.concatenate([score_map.ravel().astype(np.float64) for score_map in scores]) + 0.0
        defect = np.concatenate([mask.ravel() for mask in defects])
        images = np.repeat(np.arange(len(scores), dtype=np.int32), np.diff(offsets))
        order = np.lexsort((defect, values))
        values, defect, images = values[order], defect[order], images[order]
    defect_positions = np.flatnonzero(defect)
    return _Stream(values, defect, defect_positions, images[~defect], images[defect_positions])


def _prefix_counts(labels: np.ndarray, cuts: np.ndarray, n: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(a, b, counts)``: ``counts[r - a, j] = #(labels[:cuts[r]] == j)`` for the rows ``a <= r < b``
    of the ascending ``cuts``, a bounded number of rows at a time (one pass over ``labels`` in all)."""
    rows = max(1, _CHUNK_ENTRIES // max(n, 1))
    carry, start = np.zeros(n, dtype=np.int64), 0
    for first in range(0, cuts.size, rows):
        chunk = cuts[first : first + rows]
        stop = int(chunk[-1])
        # The labels from one cut to the next go to the later cut's row; counts[r] adds rows <= r.
        rows_of_labels = np.repeat(np.arange(chunk.size) * n, np.diff(chunk, prepend=start))
        histogram = np.bincount(rows_of_labels + labels[start:stop], minlength=chunk.size * n)
        counts = np.add.accumulate(histogram.reshape(chunk.size, n), axis=0)
        counts += carry
        carry, start = counts[-1].copy(), stop
        yield first, first + chunk.size, counts


def _range_counts(labels: np.ndarray, starts: np.ndarray, stops: np.ndarray, n: int) -> np.ndarray:
    """``counts[r, j] = #(labels[starts[r]:stops[r]] == j)`` (float64) for disjoint ranges."""
    lengths = stops - starts
    rows_of_labels = np.repeat(np.arange(starts.size) * n, lengths)
    shift = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    selected = labels[np.arange(rows_of_labels.size) + shift]
    return np.bincount(rows_of_labels + selected, minlength=starts.size * n).reshape(starts.size, n) * 1.0


def _pair_counts(stream: _Stream, n: int) -> np.ndarray:
    """``pairs[i, j]``: defect pixels of image ``i`` above normal pixels of image ``j``, ties one half."""
    defect_count = stream.defect_positions.size
    won = np.zeros((n, n), dtype=np.int64)  # normal pixels before each defect pixel, ties included
    normals_before = stream.defect_positions - np.arange(defect_count)
    for first, stop, counts in _prefix_counts(stream.normal_images, normals_before, n):
        images = stream.defect_images[first:stop]
        order = np.argsort(images, kind="stable")
        starts = np.flatnonzero(np.r_[True, images[order][1:] != images[order][:-1]])
        won[images[order][starts]] += np.add.reduceat(counts[order], starts, axis=0)
    return won.astype(np.float64) - 0.5 * _tied_pairs(stream, n)


def _tied_pairs(stream: _Stream, n: int) -> np.ndarray:
    """``T[i, j]``: (defect pixel of ``i``, normal pixel of ``j``) pairs of equal score. Normal pixels come
    first inside a tie, so a tie of both kinds shows as a normal pixel right before an equal defect pixel."""
    values, defect = stream.values, stream.defect
    boundaries = np.flatnonzero(defect[1:] & ~defect[:-1])
    boundaries = boundaries[values[boundaries] == values[boundaries + 1]] + 1  # the tie's first defect
    tied = np.zeros((n, n))
    if boundaries.size == 0:
        return tied
    starts = np.searchsorted(values, values[boundaries], side="left")
    stops = np.searchsorted(values, values[boundaries], side="right")
    # Index ranges of each tie among the normal pixels and among the defect pixels.
    normal_starts, normal_stops = stream.normals_before(starts), stream.normals_before(boundaries)
    defect_starts, defect_stops = boundaries - normal_stops, stops - normal_stops
    rows = max(1, _CHUNK_ENTRIES // n)
    for first in range(0, boundaries.size, rows):
        chunk = slice(first, first + rows)
        normals = _range_counts(stream.normal_images, normal_starts[chunk], normal_stops[chunk], n)
        tied += _range_counts(stream.defect_images, defect_starts[chunk], defect_stops[chunk], n).T @ normals
    return tied


def _unit_f1_max(stream: _Stream) -> tuple[float, float, np.ndarray]:
    """Exact F1-max of all pixels (unit weights), its threshold, and the pixels at or above each threshold
    whose F1 is at least ``_F1_NEAR`` of the maximum."""
    defect_values = stream.values[stream.defect_positions]
    starts = np.flatnonzero(np.r_[True, defect_values[1:] != defect_values[:-1]])
    true_positives = defect_values.size - starts
    predicted = stream.values.size - np.searchsorted(stream.values, defect_values[starts], side="left")
    f1 = 2.0 * true_positives / (predicted + defect_values.size)
    best = int(np.argmax(f1))
    return float(f1[best]), float(defect_values[starts[best]]), predicted[f1 >= _F1_NEAR * f1[best]]


def _grid_thresholds(stream: _Stream, grid: int, fpr_limit: float) -> np.ndarray:
    """At most ``grid`` ascending scores (see the module docstring for where they are placed)."""
    values, defect_count = stream.values, stream.defect_positions.size
    changes = values[1:] != values[:-1]
    if np.count_nonzero(changes) < grid:  # few distinct scores (quantized maps): all of them, exact
        return values[np.r_[0, np.flatnonzero(changes) + 1]]
    del changes
    normal_count = values.size - defect_count
    fpr_points, defect_points = int(_FPR_SHARE * grid), int(_DEFECT_SHARE * grid)
    top_points = grid - fpr_points - defect_points - 4
    points = [values[[0, -1]]]
    if normal_count:
        fprs = np.r_[np.linspace(0.0, min(1.0, _FPR_REACH * fpr_limit), fpr_points)[1:], fpr_limit]
        from_top = np.clip(np.ceil(fprs * normal_count - 1e-9).astype(np.int64), 1, normal_count)
        normal_index = np.maximum(normal_count - from_top, 0)
        normals_before_defect = stream.defect_positions - np.arange(defect_count)
        points.append(values[normal_index + np.searchsorted(normals_before_defect, normal_index, "right")])
    if defect_count:
        picks = np.linspace(0, defect_count - 1, defect_points).round().astype(np.int64)
        points.append(values[stream.defect_positions[picks]])
        _, threshold, near = _unit_f1_max(stream)
        reach = (near.min() / _TOP_REACH, min(values.size - 1.0, _TOP_REACH * near.max()))
        top = values.size - 1 - np.linspace(*reach, max(top_points, 1)).round().astype(np.int64)
        points += [values[top], np.array([threshold])]
    return np.unique(np.concatenate(points))


def _curves(stream: _Stream, thresholds: np.ndarray, defect_table: tuple, n: int) -> tuple:
    """Per image and threshold (``n × G``): normal pixels, defect pixels and summed region overlaps at or
    above the threshold."""
    cuts = stream.normals_before(np.searchsorted(stream.values, thresholds, side="left"))
    below = np.concatenate([counts for _, _, counts in _prefix_counts(stream.normal_images, cuts, n)])
    normal_counts = np.bincount(stream.normal_images, minlength=n)
    false_positives = (normal_counts - below).T.astype(np.float64)
    defect_values, defect_images, region_weights = defect_table
    # A defect pixel counts at the thresholds at or below its score: the first ``above`` of them.
    index = np.searchsorted(thresholds, defect_values, side="right") * n + defect_images
    shape = (thresholds.size + 1, n)
    curves = []
    for weights in (None, region_weights):
        histogram = np.bincount(index, weights=weights, minlength=shape[0] * n).reshape(shape)
        curves.append(np.cumsum(histogram[:0:-1], axis=0)[::-1].T.astype(np.float64))
    return false_positives, curves[0], curves[1]


def _defect_table(scores: list[np.ndarray], defects: list[np.ndarray]) -> tuple[tuple, np.ndarray]:
    """Every defect pixel's score, image and ``1 / size`` of its 8-connected region; regions per image."""
    values, images, weights, regions = [], [], [], np.zeros(len(scores))
    for image, (score_map, mask) in enumerate(zip(scores, defects, strict=True)):
        sizes, regions[image] = defect_region_sizes(mask[None])
        values.append(score_map[mask].astype(np.float64) + 0.0)
        images.append(np.full(sizes.size, image, dtype=np.int64))
        weights.append(1.0 / sizes)
    return (np.concatenate(values), np.concatenate(images), np.concatenate(weights)), regions


def _aupro_on_grid(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float, inexact: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per row: trapezoid area under (FPR, PRO) (ascending FPR, from (0, 0)) up to ``fpr_limit`` divided by
    it, and the bound on the difference to the curve through every threshold (module docstring); only the
    pieces marked ``inexact`` (scores between their ends) add to the bound."""
    fpr = np.concatenate([np.zeros((len(fpr), 1)), fpr], axis=1)
    pro = np.concatenate([np.zeros((len(pro), 1)), pro], axis=1)
    start, end = fpr[:, :-1], fpr[:, 1:]
    width = np.clip(end, None, fpr_limit) - np.clip(start, None, fpr_limit)
    rise = pro[:, 1:] - pro[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(end > start, width / (end - start), 0.0)
    area = (width * (2.0 * pro[:, :-1] + rise * fraction)).sum(axis=1) / 2.0
    crossing = (end > fpr_limit) & (width > 0)
    bound = (width * rise * np.where(crossing, 1.0, 0.5) * inexact).sum(axis=1)
    return area / fpr_limit, bound / fpr_limit


def grid_metrics(parts: PixelParts, weights: np.ndarray) -> dict[str, np.ndarray]:
    """``pixel_aupro`` and ``pixel_f1_max`` of each weight row (``B × n``) on the grid, and their bounds
    (``pixel_aupro_bound``, ``pixel_f1_max_bound``); nan where a resample has no region / defect pixel."""
    weights = np.asarray(weights, dtype=np.float64)
    false_positives, true_positives = weights @ parts.false_positives, weights @ parts.true_positives
    positives = (weights @ parts.positives)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = false_positives / (weights @ parts.negatives)[:, None]
        pro = (weights @ parts.overlaps) / (weights @ parts.regions)[:, None]
        # The piece from (0, 0) to the highest threshold is exact, as is any between adjacent scores.
        inexact = np.r_[False, parts.gaps[::-1]]
        aupro, aupro_bound = _aupro_on_grid(fpr[:, ::-1], pro[:, ::-1], parts.fpr_limit, inexact)
        f1 = 2.0 * true_positives / (true_positives + false_positives + positives)
        best = f1.max(axis=1)
        # Between thresholds t < u with scores between them: TP <= TP(t) and FP >= FP(u).
        ceiling = 2.0 * true_positives[:, :-1][:, parts.gaps] / (
            true_positives[:, :-1][:, parts.gaps] + false_positives[:, 1:][:, parts.gaps] + positives
        )
        f1_bound = np.maximum(ceiling.max(axis=1, initial=0.0) - best, 0.0)
    return {"pixel_aupro": aupro, "pixel_aupro_bound": aupro_bound,
            "pixel_f1_max": best, "pixel_f1_max_bound": f1_bound}


@dataclass(frozen=True)
class PixelParts:
    """Per image ``i`` of a test set: ``positives`` / ``negatives`` (defect / normal pixels), ``regions``
    (8-connected defect regions), ``pairs`` (``n × n``, see the module docstring), and on the ascending
    ``thresholds`` (``G``; ``gaps[t]``: some score lies strictly between thresholds ``t`` and ``t + 1``)
    the ``n × G`` curves ``false_positives``, ``true_positives`` and ``overlaps`` (summed region overlap)
    at or above each. ``aupro_bound`` / ``f1_bound``: how far the grid's unit-weight
    AUPRO / F1-max can be from the exact ones (``functional.aupro`` / ``f1_max``)."""

    positives: np.ndarray
    negatives: np.ndarray
    regions: np.ndarray
    pairs: np.ndarray
    thresholds: np.ndarray
    gaps: np.ndarray
    false_positives: np.ndarray
    true_positives: np.ndarray
    overlaps: np.ndarray
    fpr_limit: float
    aupro_bound: float = float("nan")
    f1_bound: float = float("nan")

    @classmethod
    def from_maps(cls, maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                  fpr_limit: float = 0.3, grid: int = 1000) -> PixelParts:
        """From per-image score maps (``H×W`` each) and binary masks; one sort of all pixels."""
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
        if grid < 16:
            raise ValueError(f"grid must be at least 16 thresholds, got {grid}.")
        scores, defects = _read_images(maps, masks)
        n = len(scores)
        stream = _sorted_stream(scores, defects)
        defect_table, regions = _defect_table(scores, defects)
        thresholds = _grid_thresholds(stream, grid, fpr_limit)
        positives = np.bincount(stream.defect_images, minlength=n).astype(np.float64)
        negatives = np.bincount(stream.normal_images, minlength=n).astype(np.float64)
        # gaps[t]: some score lies strictly between thresholds t and t + 1 (else that step is exact).
        gaps = (np.searchsorted(stream.values, thresholds[:-1], side="right")
                < np.searchsorted(stream.values, thresholds[1:], side="left"))
        parts = cls(positives, negatives, regions, _pair_counts(stream, n), thresholds, gaps,
                    *_curves(stream, thresholds, defect_table, n), fpr_limit=float(fpr_limit))
        unit = grid_metrics(parts, np.ones((1, n)))
        return dataclasses.replace(parts, aupro_bound=float(unit["pixel_aupro_bound"][0]),
                                   f1_bound=float(unit["pixel_f1_max_bound"][0]))
