"""Exact :class:`~anomaly_attn.metrics.score_rows.ScoreRows` from one sort of the pixels, no histogram.

The defect pixels (a few percent of all pixels) are sorted with their AUPRO weights and grouped by
distinct score; the normal pixels are sorted too, and ``np.searchsorted`` gives for every distinct defect
score the number of normal pixels below and equal to it: one exact row per distinct defect score.

Normal pixels are sorted in slices of at most ``SORT_CHUNK_PIXELS`` (2^25, 128 MB of float32 scores), so
a whole 1024² MVTec category (100-170 M pixels) costs that slice, the defect pixels (24 bytes each while
sorted) and the masks' bookkeeping, never a second copy of the maps. With ``region_lower`` only the
pixels at or above it are sorted; those below form one inexact row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from anomaly_attn.metrics.score_rows import ScoreRows

# Normal pixels sorted at once (float32: 128 MB); larger inputs are sorted slice by slice.
SORT_CHUNK_PIXELS = 2**25


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
    defect_scores, defect_region_sizes, below_defects, below_weight = _defects_in_region(
        defect_scores, defect_region_sizes, region_lower
    )
    distinct_scores, run_starts, defect_counts, weight_sums = _distinct_defect_scores(
        defect_scores, defect_region_sizes
    )
    normals_below, normals_equal, normals_in_region = _normals_below_and_equal(
        normal_chunks, distinct_scores, run_starts, defect_counts, num_defect, all_scores
    )
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


def _defects_in_region(
    defect_scores: np.ndarray, defect_region_sizes: np.ndarray | None, region_lower: float | None
) -> tuple[np.ndarray, np.ndarray | None, int, float]:
    """The defect scores (and region sizes) at or above ``region_lower``, the number of defect pixels below
    it and the sum of their AUPRO weights (all of them, 0 and 0.0 without ``region_lower``)."""
    if region_lower is None:
        return defect_scores, defect_region_sizes, 0, 0.0
    below_weight = 0.0
    in_region = defect_scores >= region_lower
    below_defects = defect_scores.size - int(np.count_nonzero(in_region))
    if defect_region_sizes is not None:
        below_weight = float((1.0 / defect_region_sizes[~in_region]).sum())
        defect_region_sizes = defect_region_sizes[in_region]
    return defect_scores[in_region], defect_region_sizes, below_defects, below_weight


def _distinct_defect_scores(
    defect_scores: np.ndarray, defect_region_sizes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The distinct defect scores (ascending), where each one's run starts among the sorted defect pixels,
    its number of defect pixels and (with ``defect_region_sizes``, else ``None``) their summed weights."""
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
    return distinct_scores, run_starts, defect_counts, weight_sums


def _normals_below_and_equal(
    normal_chunks: Iterable[np.ndarray],
    distinct_scores: np.ndarray,
    run_starts: np.ndarray,
    defect_counts: np.ndarray,
    num_defect: int,
    all_scores: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The normal pixels of all ``normal_chunks`` below and equal to each of ``distinct_scores``, and the
    number of normal pixels the chunks hold (see :func:`exact_rows_from_parts` for ``all_scores``)."""
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
    return normals_below, normals_equal, normals_in_region


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
