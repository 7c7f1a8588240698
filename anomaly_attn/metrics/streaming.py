"""torchmetrics Metrics for image- and pixel-level anomaly evaluation, fed batch by batch.

``AnomalyPixelMetrics`` is exact up to ``exact_pixels`` pixels and bounded in memory beyond, and reports
with every result the error bound that the memory limit costs (``error_bound``; 0.0 = exact).

Up to ``exact_pixels`` pixels (default 2^24: a whole MVTec category at 256²) the scores are kept as they
are (4 bytes per normal pixel, 8 per defect pixel in float32) and ``compute`` runs the exact sort-based
computation of :mod:`anomaly_attn.metrics.functional`.

Beyond, the pixels go into cells on the bit pattern of the scores. Every score is mapped to a monotone
64-bit integer key (the IEEE-754 bits of its float64 value, negatives mirrored), so equal scores share a
key and the key order is the score order, from -1e308 to 1e308. A cell at shift ``s`` holds the keys that
share all but the lowest ``s`` bits: a fixed, data-independent lattice whose cells are about ``2^(s-52)``
wide relative to their score (log-spaced), so an outlier at 1e6, log-normal maps or scores spanning
1e-30...1e30 leave every other cell as fine as before. The state is the sparse table of non-empty cells
(first key, normal count, defect count, ``Σ 1/size(region)`` over the defect pixels) at one shift, the
smallest that keeps at most ``num_bins`` cells: when a batch would exceed that, the shift rises until at
most half remain. Cells then merge in aligned pairs -- nothing is clipped -- and each metric's error
bound accounts for every order the pixels inside a cell may have
(:class:`~anomaly_attn.metrics.functional.ScoreRows`). Tables at different shifts (other processes,
``merge_state``, ``forward``) merge exactly at the coarser one, so every state is a plain torchmetrics
``cat``/``sum``/``min`` state and no private torchmetrics method is overridden (only the public ``sync``,
to give a process without data empty tables of the right dtype).

IoU: ``iou_threshold`` given at construction is counted exactly during ``update``; ``iou(threshold)`` is
exact while the scores are kept, and otherwise comes from the cells with its own bound.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from anomaly_attn.metrics.functional import (
    DEFAULT_NUM_BINS,
    SORT_CHUNK_PIXELS,
    ArrayLike,
    ScoreRows,
    _sort_with_region_sizes,
    _validate_fpr_limit,
    defect_region_sizes,
    exact_rows_from_parts,
    f1_max_threshold,
    image_auroc,
    prepare_maps_and_masks,
    rows_aupro,
    rows_auroc,
    rows_f1_max,
    rows_iou,
)

# Pixels whose scores are kept exactly before the metric switches to cells (64 MB of float32 scores).
DEFAULT_EXACT_PIXELS = 2**24

# Pixels turned into cells at once (a 1024² map); bounds the temporaries of an update.
_CELL_CHUNK_PIXELS = 2**20

# Largest shift at which every cell holds at most one float32 value: float32 widened to float64 leaves
# the 29 lowest mantissa bits zero.
_FLOAT32_EXACT_SHIFT = 29
_NO_DATA_SHIFT = 64

# compute() and iou() warn when their error bound exceeds this.
BOUND_WARNING = 1e-4

_MAGNITUDE_BITS = np.int64(0x7FFF_FFFF_FFFF_FFFF)
_SIGN_BIT = np.int64(-(2**63))


def float_keys(values: np.ndarray) -> np.ndarray:
    """Monotone int64 keys of float scores: ``a < b <=> key(a) < key(b)``; -0.0 and 0.0 share key 0."""
    bits = np.asarray(values, dtype=np.float64).view(np.int64)
    sign = bits >> 63  # 0 for positive, -1 for negative scores
    keys = bits ^ (sign & _MAGNITUDE_BITS)  # negative: -1 - magnitude bits
    keys -= sign  # negative: -magnitude bits, so -0.0 maps to 0
    return keys


def values_from_keys(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys` (float64)."""
    magnitude_bits = np.abs(keys)
    return np.where(keys < 0, magnitude_bits | _SIGN_BIT, magnitude_bits).view(np.float64)


_LARGEST_FINITE_KEY = int(float_keys(np.array([np.finfo(np.float64).max]))[0])


def _run_starts(sorted_values: np.ndarray) -> np.ndarray:
    if sorted_values.size == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])


def _sum_runs(column: np.ndarray, run_starts: np.ndarray) -> np.ndarray:
    """Sums of ``column`` over the runs starting at ``run_starts`` (a cumulative-sum difference: counts
    stay exact, weights move by float64 rounding only)."""
    if run_starts.size == 0:
        return np.zeros(0)
    totals = np.cumsum(column, dtype=np.float64)
    run_totals = totals[np.r_[run_starts[1:], column.size] - 1]
    return np.diff(run_totals, prepend=0.0)


@dataclass(frozen=True)
class CellTable:
    """Non-empty cells at one shift, ascending: first key of each cell and its pixel statistics."""

    starts: np.ndarray
    normals: np.ndarray
    defects: np.ndarray
    weights: np.ndarray
    shift: int

    @classmethod
    def empty(cls, shift: int = 0) -> CellTable:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), shift)

    @classmethod
    def grouped(
        cls, starts: np.ndarray, normals: np.ndarray, defects: np.ndarray, weights: np.ndarray, shift: int
    ) -> CellTable:
        """Cells from rows whose keys (any order, repeats allowed) are already cell starts at ``shift``."""
        if starts.size > 1 and not np.all(starts[1:] >= starts[:-1]):
            # Concatenated sorted tables: the stable sort (timsort) merges the runs in linear time.
            order = np.argsort(starts, kind="stable")
            starts, normals, defects, weights = starts[order], normals[order], defects[order], weights[order]
        first = _run_starts(starts)
        if first.size == starts.size:
            return cls(starts, normals, defects, weights, shift)
        sums = (_sum_runs(column, first) for column in (normals, defects, weights))
        return cls(starts[first], *sums, shift)

    def at_shift(self, shift: int) -> CellTable:
        """The same pixels in the cells of a coarser-or-equal ``shift`` (aligned cells merge exactly)."""
        if shift == self.shift:
            return self
        starts = (self.starts >> shift) << shift
        return CellTable.grouped(starts, self.normals, self.defects, self.weights, shift)

    def compacted(self, capacity: int) -> CellTable:
        """This table, or the same pixels at the smallest coarser shift that leaves at most half of
        ``capacity`` cells (the next compaction is then many updates away)."""
        if self.starts.size <= capacity:
            return self
        target = max(2, capacity // 2)

        def num_cells(shift: int) -> int:
            cells = self.starts >> shift
            return 1 + int(np.count_nonzero(cells[1:] != cells[:-1]))

        low, high = self.shift, 63  # at shift 63 there are at most 2 cells: negative and the rest
        while high - low > 1:
            middle = (low + high) // 2
            if num_cells(middle) <= target:
                high = middle
            else:
                low = middle
        return self.at_shift(high)

    @staticmethod
    def merged(tables: list[CellTable]) -> CellTable:
        """One table from tables of any shifts, at the coarsest shift."""
        tables = [table for table in tables if table.starts.size]
        if not tables:
            return CellTable.empty()
        shift = max(table.shift for table in tables)
        if len(tables) == 1:
            return tables[0].at_shift(shift)
        return CellTable.grouped(
            np.concatenate([(table.starts >> shift) << shift for table in tables]),
            np.concatenate([table.normals for table in tables]),
            np.concatenate([table.defects for table in tables]),
            np.concatenate([table.weights for table in tables]),
            shift,
        )

    def score_rows(self, exact_shift: int, num_regions: int) -> ScoreRows:
        """Highest cells first as :class:`ScoreRows`; a cell is exact (one score) up to ``exact_shift``."""
        starts = self.starts[::-1]
        normals, defects, weights = self.normals[::-1], self.defects[::-1], self.weights[::-1]
        exact = self.shift <= exact_shift
        lower = values_from_keys(np.clip(starts, -_LARGEST_FINITE_KEY, _LARGEST_FINITE_KEY))
        if exact:
            upper = lower
        else:
            last_keys = starts | np.int64((1 << self.shift) - 1)
            upper = values_from_keys(np.clip(last_keys, -_LARGEST_FINITE_KEY, _LARGEST_FINITE_KEY))
        return ScoreRows(
            normals_above=np.cumsum(normals) - normals,
            normals=normals,
            defects=defects,
            overlap_weights=weights,
            exact=np.full(starts.size, exact),
            lower=lower,
            upper=upper,
            num_normal=int(normals.sum()),
            num_defect=int(defects.sum()),
            num_regions=num_regions,
        )


def cell_table(
    normal_scores: np.ndarray, defect_scores: np.ndarray, defect_sizes: np.ndarray, shift: int
) -> CellTable:
    """Cells at ``shift`` of 1-D normal and defect scores (``defect_sizes``: the region size of each
    defect pixel). Scores are sorted as floats (SIMD for float32, ~2x cheaper than 64-bit keys), then
    keyed; a cell's count is the length of its run."""
    normal_cells = (float_keys(np.sort(normal_scores)) >> shift) << shift
    normal_first = _run_starts(normal_cells)
    normal_counts = np.diff(np.r_[normal_first, normal_cells.size]).astype(np.float64)
    normal_cells = normal_cells[normal_first]
    sorted_defects, sorted_sizes = _sort_with_region_sizes(defect_scores, defect_sizes)
    defect_cells = (float_keys(sorted_defects) >> shift) << shift
    defect_first = _run_starts(defect_cells)
    defect_counts = np.diff(np.r_[defect_first, defect_cells.size]).astype(np.float64)
    defect_weights = _sum_runs(1.0 / sorted_sizes, defect_first)
    defect_cells = defect_cells[defect_first]
    # Defect pixels are few: add them into the normal cells, inserting the cells only they occupy.
    position = np.searchsorted(normal_cells, defect_cells)
    shared = position < normal_cells.size
    shared[shared] = normal_cells[position[shared]] == defect_cells[shared]
    normals, defects, weights = normal_counts, np.zeros(normal_cells.size), np.zeros(normal_cells.size)
    defects[position[shared]] = defect_counts[shared]
    weights[position[shared]] = defect_weights[shared]
    alone, at = ~shared, position[~shared]
    return CellTable(
        np.insert(normal_cells, at, defect_cells[alone]),
        np.insert(normals, at, 0.0),
        np.insert(defects, at, defect_counts[alone]),
        np.insert(weights, at, defect_weights[alone]),
        shift,
    )


def _tensors(state: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """A list state's tensors (after a sync torchmetrics has concatenated them into one)."""
    return state if isinstance(state, list) else [state]


def _numpy(state: list[torch.Tensor] | torch.Tensor) -> list[np.ndarray]:
    return [tensor.detach().cpu().numpy() for tensor in _tensors(state)]


def _joined(arrays: list[np.ndarray], dtype: type | np.dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=dtype)


def _concatenated(state: list[torch.Tensor] | torch.Tensor, dtype: np.dtype) -> np.ndarray:
    arrays = _numpy(state)
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)


# Exact-part states per score dtype: normal scores, defect scores, region size of each defect pixel.
_RAW_STATES = {
    np.dtype(np.float32): ("raw32_normal", "raw32_defect", "raw32_size"),
    np.dtype(np.float64): ("raw64_normal", "raw64_defect", "raw64_size"),
}
# Cell states: per table [shift, number of cells]; per cell first key, normal/defect counts, weights.
_CELL_STATES = ("cell_tables", "cell_start", "cell_normal", "cell_defect", "cell_weight")
_STATE_DTYPES = {
    **{name: torch.float32 for name in ("raw32_normal", "raw32_defect")},
    **{name: torch.float64 for name in ("raw64_normal", "raw64_defect", "cell_normal", "cell_defect")},
    **{name: torch.int32 for name in ("raw32_size", "raw64_size")},
    **{name: torch.int64 for name in ("cell_tables", "cell_start")},
    "cell_weight": torch.float64,
}


class AnomalyPixelMetrics(Metric):
    """Pixel AUROC, AUPRO (MVTec AD, up to ``fpr_limit``), pixel F1-max and its threshold, and optionally
    IoU at ``iou_threshold``: exact up to ``exact_pixels`` pixels, bounded memory beyond (see the module
    docstring).

    ``update(maps, masks)``: maps ``B×H×W`` or ``B×1×H×W``, masks binary of the same shape.
    ``compute()`` returns ``pixel_auroc``, ``pixel_aupro``, ``pixel_f1_max``, ``pixel_f1_threshold``,
    ``error_bound`` (the largest absolute error any of them can have; 0.0 = exact) and, when
    ``iou_threshold`` is set, the exact ``pixel_iou``. ``iou(threshold)`` gives the IoU at any threshold.
    Choose ``iou_threshold`` on validation data (e.g. its ``pixel_f1_threshold``), never on test data.

    Args:
        fpr_limit: AUPRO's false-positive-rate limit.
        num_bins: at most this many cells (32 bytes each, 32 MB at the default 2^20) once more than
            ``exact_pixels`` pixels were seen; the error bound shrinks about in proportion.
        score_range: ignored (the cells cover any score range); kept for compatibility.
        iou_threshold: threshold of the exact ``pixel_iou`` of ``compute``.
        exact_pixels: pixels whose scores are kept for an exact result (4-12 bytes each).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        fpr_limit: float = 0.3,
        num_bins: int = DEFAULT_NUM_BINS,
        score_range: tuple[float, float] | None = None,
        iou_threshold: float | None = None,
        exact_pixels: int = DEFAULT_EXACT_PIXELS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fpr_limit = _validate_fpr_limit(fpr_limit)
        if num_bins < 4:
            raise ValueError(f"num_bins must be at least 4, got {num_bins} (default {DEFAULT_NUM_BINS}).")
        if exact_pixels < 0:
            raise ValueError(f"exact_pixels must be >= 0, got {exact_pixels} (default 2^24).")
        if score_range is not None:
            warnings.warn(
                "score_range is ignored: the cells cover any score range without clipping; drop it.",
                DeprecationWarning,
                stacklevel=2,
            )
        self.num_bins = num_bins
        self.exact_pixels = exact_pixels
        self.iou_threshold = None if iou_threshold is None else float(iou_threshold)
        for name in (*_RAW_STATES[np.dtype(np.float32)], *_RAW_STATES[np.dtype(np.float64)], *_CELL_STATES):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("num_regions", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("exact_shift", torch.tensor(_NO_DATA_SHIFT, dtype=torch.int64), dist_reduce_fx="min")
        self.add_state("iou_intersection", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_false_positives", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------------------- state helpers
    def _append(self, name: str, array: np.ndarray) -> None:
        getattr(self, name).append(torch.from_numpy(np.ascontiguousarray(array)).to(self.device))

    def _has_cells(self) -> bool:
        return any(tensor.numel() for tensor in _tensors(self.cell_tables))

    def _raw_pixel_count(self) -> int:
        score_states = [getattr(self, name) for names in _RAW_STATES.values() for name in names[:2]]
        return sum(int(tensor.numel()) for state in score_states for tensor in _tensors(state))

    def _cell_tables(self) -> list[CellTable]:
        """The tables held by the cell states (several after merges, forward or a sync)."""
        meta = _concatenated(self.cell_tables, np.int64).reshape(-1, 2)
        columns = [
            _concatenated(self.cell_start, np.int64),
            *(_concatenated(getattr(self, name), np.float64) for name in _CELL_STATES[2:]),
        ]
        tables, offset = [], 0
        for shift, size in meta:
            part = slice(offset, offset + int(size))
            tables.append(CellTable(*(column[part] for column in columns), shift=int(shift)))
            offset += int(size)
        return tables

    def _set_cells(self, table: CellTable) -> None:
        self.cell_tables, self.cell_start = [], []
        self.cell_normal, self.cell_defect, self.cell_weight = [], [], []
        self._append_cells(table)

    def _append_cells(self, table: CellTable) -> None:
        self._append("cell_tables", np.array([table.shift, table.starts.size], dtype=np.int64))
        self._append("cell_start", table.starts)
        self._append("cell_normal", table.normals)
        self._append("cell_defect", table.defects)
        self._append("cell_weight", table.weights)

    def _raw_parts(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Kept normal scores (arrays), defect scores and their region sizes; float64 if any is."""
        parts = {
            name: [array for array in _numpy(getattr(self, name)) if array.size]
            for names in _RAW_STATES.values()
            for name in names
        }
        has_float64 = any(parts[name] for name in _RAW_STATES[np.dtype(np.float64)][:2])
        dtype = np.float64 if has_float64 else np.float32
        normals, defects, sizes = [], [], []
        for normal_name, defect_name, size_name in _RAW_STATES.values():
            normals += [array.astype(dtype, copy=False) for array in parts[normal_name]]
            defects += [array.astype(dtype, copy=False) for array in parts[defect_name]]
            sizes += [array.astype(np.int64) for array in parts[size_name]]
        return normals, _joined(defects, dtype), _joined(sizes, np.int64)

    def _raw_to_cells(self) -> None:
        """Move the kept scores into cells (at the current cell shift) and compact."""
        normals, defects, sizes = self._raw_parts()
        tables = self._cell_tables()
        shift = max((table.shift for table in tables), default=0)
        tables.append(cell_table(_joined(normals, defects.dtype), defects, sizes, shift))
        for names in _RAW_STATES.values():
            for name in names:
                setattr(self, name, [])
        self._set_cells(CellTable.merged(tables).compacted(self.num_bins))

    # ------------------------------------------------------------------------------- Metric API
    def update(self, maps: ArrayLike, masks: ArrayLike) -> None:
        """Add a batch of anomaly maps and their binary ground-truth masks."""
        scores, defect = prepare_maps_and_masks(maps, masks)
        if scores.size == 0:
            return
        if scores.dtype != np.float32:
            scores = scores.astype(np.float64, copy=False)
        sizes, num_regions = defect_region_sizes(defect)
        exact_shift = _FLOAT32_EXACT_SHIFT if scores.dtype == np.float32 else 0
        self.exact_shift = torch.clamp(self.exact_shift, max=exact_shift)
        self.num_regions = self.num_regions + num_regions
        if self.iou_threshold is not None:
            predicted = scores >= self.iou_threshold
            self.iou_intersection = self.iou_intersection + int(np.count_nonzero(predicted & defect))
            self.iou_false_positives = self.iou_false_positives + int(np.count_nonzero(predicted & ~defect))
        normal_names = _RAW_STATES[scores.dtype]
        if not self._has_cells() and self._raw_pixel_count() + scores.size <= self.exact_pixels:
            self._append(normal_names[0], scores[~defect])
            self._append(normal_names[1], scores[defect])
            self._append(normal_names[2], sizes.astype(np.int32))
            return
        if self._raw_pixel_count():
            self._raw_to_cells()
        self._add_to_cells(scores.reshape(-1), defect.reshape(-1), sizes)

    def _add_to_cells(self, flat_scores: np.ndarray, flat_defect: np.ndarray, sizes: np.ndarray) -> None:
        tables = self._cell_tables()
        shift = max((table.shift for table in tables), default=0)
        num_cells = sum(table.starts.size for table in tables)
        sizes_used = 0
        for start in range(0, flat_scores.size, _CELL_CHUNK_PIXELS):
            chunk_scores = flat_scores[start : start + _CELL_CHUNK_PIXELS]
            chunk_defect = flat_defect[start : start + _CELL_CHUNK_PIXELS]
            chunk_sizes = sizes[sizes_used : sizes_used + int(np.count_nonzero(chunk_defect))]
            sizes_used += chunk_sizes.size
            table = cell_table(chunk_scores[~chunk_defect], chunk_scores[chunk_defect], chunk_sizes, shift)
            self._append_cells(table)
            num_cells += table.starts.size
            if num_cells > self.num_bins:
                merged = CellTable.merged(self._cell_tables()).compacted(self.num_bins)
                self._set_cells(merged)
                shift, num_cells = merged.shift, merged.starts.size

    def score_rows(self) -> ScoreRows:
        """The accumulated (local, or synced inside ``compute``/``sync_context``) pixels as score rows:
        exact while every score is kept, else the cells."""
        num_regions = int(self.num_regions)
        tables = self._cell_tables()
        normals, defects, sizes = self._raw_parts()
        if not tables:
            num_normal = sum(array.size for array in normals)
            chunks = _sorting_chunks(normals)
            return exact_rows_from_parts(chunks, defects, sizes, num_normal, num_regions)
        if normals or defects.size:
            shift = max(table.shift for table in tables)
            tables.append(cell_table(_joined(normals, defects.dtype), defects, sizes, shift))
        table = CellTable.merged(tables).compacted(self.num_bins)
        return table.score_rows(int(self.exact_shift), num_regions)

    def compute(self) -> dict[str, torch.Tensor]:
        """Pixel AUROC, AUPRO, F1-max and its threshold, their ``error_bound``, and the exact IoU at
        ``iou_threshold`` when set."""
        rows = self.score_rows()
        auroc, auroc_bound = rows_auroc(rows)
        aupro_value, aupro_bound = rows_aupro(rows, self.fpr_limit)
        f1_best, f1_threshold, f1_bound = rows_f1_max(rows)
        error_bound = max(auroc_bound, aupro_bound, f1_bound)
        results = {
            "pixel_auroc": auroc,
            "pixel_aupro": aupro_value,
            "pixel_f1_max": f1_best,
            "pixel_f1_threshold": f1_threshold,
            "error_bound": error_bound,
        }
        if self.iou_threshold is not None:
            union = rows.num_defect + int(self.iou_false_positives)
            results["pixel_iou"] = int(self.iou_intersection) / union if union else float("nan")
        if error_bound > BOUND_WARNING:
            warnings.warn(
                f"pixel metrics may be off by up to {error_bound:.2g} (error_bound): more than "
                f"exact_pixels={self.exact_pixels} pixels and num_bins={self.num_bins} cells; raise either.",
                RuntimeWarning,
                stacklevel=2,
            )
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in results.items()}

    def iou(
        self, threshold: float, return_bound: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """IoU of ``map >= threshold`` vs the masks over all processes: exact at ``iou_threshold`` and
        while the scores are kept, else from the cells (``return_bound=True`` also returns its bound)."""
        with self.sync_context():
            rows = self.score_rows()
            if self.iou_threshold is not None and float(threshold) == self.iou_threshold:
                union = rows.num_defect + int(self.iou_false_positives)
                value, bound = (int(self.iou_intersection) / union if union else float("nan")), 0.0
            elif not self._has_cells():
                value, bound = self._exact_iou(float(threshold), rows.num_defect), 0.0
            else:
                value, bound = rows_iou(rows, float(threshold))
        if bound > BOUND_WARNING:
            warnings.warn(
                f"IoU at {threshold:g} may be off by up to {bound:.2g}: the threshold falls inside a cell; "
                "pass iou_threshold to AnomalyPixelMetrics for an exact IoU.",
                RuntimeWarning,
                stacklevel=2,
            )
        value_tensor = torch.tensor(value, dtype=torch.float64)
        return (value_tensor, torch.tensor(bound, dtype=torch.float64)) if return_bound else value_tensor

    def _exact_iou(self, threshold: float, num_defect: int) -> float:
        normals, defects, _ = self._raw_parts()
        intersection = int(np.count_nonzero(defects >= threshold))
        union = num_defect + sum(int(np.count_nonzero(array >= threshold)) for array in normals)
        if union == 0:
            reason = "neither the masks nor the thresholded maps contain a positive pixel"
            warnings.warn(f"IoU is undefined: {reason}; returning nan.", RuntimeWarning, stacklevel=3)
            return float("nan")
        return intersection / union

    def sync(
        self,
        dist_sync_fn: Callable | None = None,
        process_group: Any | None = None,
        should_sync: bool = True,
        distributed_available: Callable | None = None,
    ) -> None:
        """Give every empty list state an empty tensor of its own dtype before syncing: torchmetrics would
        stand in a float32 tensor, which cannot be gathered with the other processes' tables."""
        available = distributed_available or self.distributed_available_fn
        if should_sync and callable(available) and available():
            for name, dtype in _STATE_DTYPES.items():
                if isinstance(getattr(self, name), list) and not getattr(self, name):
                    setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)


def _sorting_chunks(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenations (copies: they get sorted in place) of consecutive arrays, each up to
    ``SORT_CHUNK_PIXELS`` elements unless a single array is larger."""
    chunks, pending, pending_size = [], [], 0
    for array in arrays:
        if pending and pending_size + array.size > SORT_CHUNK_PIXELS:
            chunks.append(np.concatenate(pending))
            pending, pending_size = [], 0
        pending.append(array)
        pending_size += array.size
    if pending:
        chunks.append(np.concatenate(pending))
    return chunks


class AnomalyImageMetrics(Metric):
    """Image AUROC, image F1-max and its threshold from one score per image (``score >= threshold`` is
    anomalous). Scores are kept (one number per image), so the results are exact."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of image scores (``B``) and labels (``B``, 0 normal / 1 anomalous)."""
        scores, labels = torch.as_tensor(scores).flatten(), torch.as_tensor(labels).flatten()
        if scores.shape != labels.shape:
            raise ValueError(f"got {scores.numel()} image scores but {labels.numel()} labels.")
        self.scores.append(scores.detach().to(self.device, torch.float64))
        self.labels.append(labels.detach().to(self.device, torch.int64))

    def compute(self) -> dict[str, torch.Tensor]:
        """``image_auroc``, ``image_f1_max``, ``image_f1_threshold``."""
        scores = torch.cat(self.scores) if isinstance(self.scores, list) else self.scores
        labels = torch.cat(self.labels) if isinstance(self.labels, list) else self.labels
        f1_best, f1_threshold = f1_max_threshold(scores, labels)
        results = {
            "image_auroc": image_auroc(scores, labels),
            "image_f1_max": f1_best,
            "image_f1_threshold": f1_threshold,
        }
        return {name: torch.tensor(value, dtype=torch.float64) for name, value in results.items()}
