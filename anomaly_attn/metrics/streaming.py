"""torchmetrics Metrics for image- and pixel-level anomaly evaluation, fed batch by batch.

``AnomalyPixelMetrics`` is exact up to ``exact_pixels`` pixels and bounded in memory beyond, and reports
with every result the error bound that the memory limit costs (``error_bound``; 0.0 = exact).

Up to ``exact_pixels`` pixels (default 2^24: a whole MVTec category at 256²) the scores are kept as they
are (4 bytes per normal pixel, 8 per defect pixel in float32) and ``compute`` runs the exact sort-based
computation of :mod:`anomaly_attn.metrics.exact_sort`.

Beyond, the pixels are counted into at most ``num_bins`` cells cut from the IEEE-754 bit pattern of the
scores (:mod:`anomaly_attn.metrics.cells`): per binade of the scores, cells of equal relative width,
allocated in proportion to the binade's pixels, so an outlier at 1e6, log-normal maps or scores spanning
1e-30...1e30 leave the cells elsewhere as fine as before and nothing is ever clipped. Inside a cell that
holds more than one score the order of the pixels is lost; each metric's error bound accounts for every
such order (:class:`~anomaly_attn.metrics.score_rows.ScoreRows`), and ``compute`` warns when it exceeds
1e-4. About 1e-5 for a 170-map 1024² category (``BENCHMARKS.md``).

Every state is a plain torchmetrics ``cat``/``sum`` state: tables of other processes, of ``merge_state``
and ``forward`` are merged in ``compute`` (cells exactly, at the coarser width of each binade), so no
private torchmetrics method is overridden -- only the public ``sync``, which gives a process without data
empty tensors of each state's own dtype (torchmetrics would stand in float32 ones).

IoU: ``iou_threshold`` given at construction is counted exactly during ``update``; ``iou(threshold)`` is
exact while the scores are kept, and otherwise comes from the cells with its own bound.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from anomaly_attn.metrics.cells import BinadeCells, slot_counts
from anomaly_attn.metrics.exact_sort import SORT_CHUNK_PIXELS, exact_rows_from_parts
from anomaly_attn.metrics.functional import f1_max_threshold, image_auroc
from anomaly_attn.metrics.inputs import ArrayLike, _validate_fpr_limit, prepare_maps_and_masks
from anomaly_attn.metrics.regions import defect_region_sizes
from anomaly_attn.metrics.score_rows import ScoreRows, rows_aupro, rows_auroc, rows_f1_max, rows_iou

# Cells of the streaming Metric's bounded memory (metrics/cells.py), 33 bytes each.
DEFAULT_NUM_BINS = 2**20

# Pixels whose scores are kept exactly before the metric switches to cells (64 MB of float32 scores).
DEFAULT_EXACT_PIXELS = 2**24

# Pixels counted into cells at once: bounds the temporaries of an update (~70 MB).
_CELL_CHUNK_PIXELS = 2**21

# compute() and iou() warn when their error bound exceeds this.
BOUND_WARNING = 1e-4


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
# Cell states: per table a BinadeCells header; per cell normal and defect counts, weights, one score's
# bits and whether another score was seen.
_CELL_STATES = ("cell_headers", "cell_normal", "cell_defect", "cell_weight", "cell_value", "cell_mixed")
_STATE_DTYPES = {
    **{name: torch.float32 for name in ("raw32_normal", "raw32_defect")},
    **{name: torch.float64 for name in ("raw64_normal", "raw64_defect", "cell_normal", "cell_defect")},
    **{name: torch.int32 for name in ("raw32_size", "raw64_size")},
    **{name: torch.int64 for name in ("cell_headers", "cell_value")},
    "cell_mixed": torch.uint8,
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
        num_bins: at most this many cells (33 bytes each, 33 MB at the default 2^20) once more than
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
        self.add_state("iou_intersection", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_false_positives", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    # ------------------------------------------------------------------------------- state helpers
    def _append(self, name: str, array: np.ndarray) -> None:
        getattr(self, name).append(torch.from_numpy(np.ascontiguousarray(array)).to(self.device))

    def _has_cells(self) -> bool:
        return any(tensor.numel() for tensor in _tensors(self.cell_headers))

    def _raw_pixel_count(self) -> int:
        score_states = [getattr(self, name) for names in _RAW_STATES.values() for name in names[:2]]
        return sum(int(tensor.numel()) for state in score_states for tensor in _tensors(state))

    def _cells(self) -> BinadeCells:
        """The cells of the state as one new table (merging the tables of merge_state, forward or a sync)."""
        columns = [_concatenated(getattr(self, name), np.float64) for name in _CELL_STATES[1:4]]
        values = _concatenated(self.cell_value, np.int64)
        mixed = _concatenated(self.cell_mixed, np.uint8).astype(bool)
        headers = _concatenated(self.cell_headers, np.int64)
        return BinadeCells.merged(BinadeCells.from_state(headers, *columns, values, mixed))

    def _cells_in_state_memory(self) -> BinadeCells | None:
        """The state's table with arrays sharing the state's memory (counting into them updates the state
        without an O(num_bins) copy per update), when it is a single table on the CPU; else None."""
        states = [_tensors(getattr(self, name)) for name in _CELL_STATES]
        if not all(len(state) == 1 and state[0].device.type == "cpu" for state in states):
            return None
        arrays = [state[0].numpy() for state in states]
        return BinadeCells.from_state(arrays[0], *arrays[1:5], arrays[5].view(bool))[0]

    def _set_cells(self, table: BinadeCells) -> None:
        columns = (table.normals, table.defects, table.weights, table.values, table.mixed.view(np.uint8))
        for name, array in zip(_CELL_STATES, (table.header(), *columns), strict=True):
            setattr(self, name, [])
            self._append(name, array)

    def _counted_into_cells(
        self, table: BinadeCells, normal_parts: list[np.ndarray], defects: np.ndarray, sizes: np.ndarray
    ) -> BinadeCells:
        """``table`` plus kept scores: slots allocated for all of them at once, then counted by slices."""
        arriving: dict[int, float] = {}
        for part in [*normal_parts, defects]:
            for start in range(0, part.size, _CELL_CHUNK_PIXELS):
                for slot, count in slot_counts(part[start : start + _CELL_CHUNK_PIXELS]).items():
                    arriving[slot] = arriving.get(slot, 0.0) + count
        table = table.with_slots(arriving, self.num_bins)
        for part in normal_parts:
            for start in range(0, part.size, _CELL_CHUNK_PIXELS):
                chunk = part[start : start + _CELL_CHUNK_PIXELS]
                table = table.added(chunk, np.zeros(chunk.size, bool), sizes[:0], self.num_bins)
        return table.added(defects, np.ones(defects.size, bool), sizes, self.num_bins)

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
        """Move the kept scores into the cells."""
        normals, defects, sizes = self._raw_parts()
        table = self._counted_into_cells(self._cells(), normals, defects, sizes)
        for names in _RAW_STATES.values():
            for name in names:
                setattr(self, name, [])
        self._set_cells(table)

    # ------------------------------------------------------------------------------- Metric API
    def update(self, maps: ArrayLike, masks: ArrayLike) -> None:
        """Add a batch of anomaly maps and their binary ground-truth masks."""
        scores, defect = prepare_maps_and_masks(maps, masks)
        if scores.size == 0:
            return
        if scores.dtype != np.float32:
            scores = scores.astype(np.float64, copy=False)
        sizes, num_regions = defect_region_sizes(defect)
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
        shared = self._cells_in_state_memory() if self._has_cells() else None
        if shared is not None:
            table = shared
        else:
            table = self._cells() if self._has_cells() else BinadeCells.empty()
        sizes_used = 0
        for start in range(0, flat_scores.size, _CELL_CHUNK_PIXELS):
            chunk_defect = flat_defect[start : start + _CELL_CHUNK_PIXELS]
            chunk_sizes = sizes[sizes_used : sizes_used + int(np.count_nonzero(chunk_defect))]
            sizes_used += chunk_sizes.size
            chunk_scores = flat_scores[start : start + _CELL_CHUNK_PIXELS]
            table = table.added(chunk_scores, chunk_defect, chunk_sizes, self.num_bins)
        if table is not shared:  # a copy, or reallocated for new slots
            self._set_cells(table)

    def score_rows(self) -> ScoreRows:
        """The accumulated (local, or synced inside ``compute``/``sync_context``) pixels as score rows:
        exact while every score is kept, else the cells."""
        num_regions = int(self.num_regions)
        normals, defects, sizes = self._raw_parts()
        if not self._has_cells():
            num_normal = sum(array.size for array in normals)
            return exact_rows_from_parts(_sorting_chunks(normals), defects, sizes, num_normal, num_regions)
        table = self._cells()
        if normals or defects.size:  # kept scores of other processes or of merged metrics
            table = self._counted_into_cells(table, normals, defects, sizes)
        return table.score_rows(num_regions)

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
