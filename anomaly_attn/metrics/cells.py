"""A bounded-memory score histogram whose bins are cut from the IEEE-754 bit pattern of the scores.

A float64 score is ``sign | exponent (11 bits) | mantissa (52 bits)``. The top 12 bits (``bits >> 52``)
name its *slot*: the binade ``[2^e, 2^(e+1))`` of its sign. Inside a slot the mantissa orders the scores
(reversed for negative ones), and a slot at *shift* ``s`` has ``2^(52-s)`` cells, each holding the scores
that share all but the lowest ``s`` mantissa bits: cells of equal width relative to their score. Only
the slots the scores occupy are allocated, each with its own shift, about in proportion to its pixels:
an outlier at 1e6 costs one small slot and leaves the others as fine as before, and scores from 1e-30 to
1e30 get cells everywhere. A pixel's cell is found with integer arithmetic (no search) and counted with
``np.bincount``.

When the cells would exceed the capacity, the slots with the most cells per pixel double their shift:
their cells merge in aligned pairs, which is exact (the table equals the one built at that shift
directly). Tables built at different shifts (other processes, ``merge_state``) merge exactly at the
coarser shift of each slot. Every cell also keeps one of its scores and whether it has seen a second,
different one: a cell of one score (a tie, zeros, quantized maps) stays exact however wide; in the others
the order of the pixels is lost, and :class:`ScoreRows` marks them inexact so that every metric's error
bound accounts for any order of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anomaly_attn.metrics.score_rows import ScoreRows

_MANTISSA_BITS = 52
_MANTISSA_MASK = np.int64((1 << _MANTISSA_BITS) - 1)
# Slot ids are bits >> 52, in [-2048, 2048): negative scores have the sign bit set.
_NUM_SLOTS = 4096
_FIRST_SLOT = -2048


def score_bits(scores: np.ndarray) -> np.ndarray:
    """float64 bit patterns (int64) of ``scores``; -0.0 becomes 0.0 first (they are the same score)."""
    return np.add(scores, 0.0, dtype=np.float64).view(np.int64)


def slot_counts(scores: np.ndarray) -> dict[int, float]:
    """Pixels of ``scores`` per slot id."""
    counts = np.bincount((score_bits(scores) >> _MANTISSA_BITS) - _FIRST_SLOT, minlength=_NUM_SLOTS)
    return {int(index) + _FIRST_SLOT: float(counts[index]) for index in np.flatnonzero(counts)}


def _value_order(slots: np.ndarray) -> np.ndarray:
    """Sort key of slots by score: negative slots from the largest exponent down, then the others up."""
    return np.where(slots >= 0, slots, -2049 - slots)


@dataclass(frozen=True)
class BinadeCells:
    """Allocated slots (ascending id) with their shifts, and the statistics of their cells.

    The cell arrays hold every slot's ``2^(52 - shift)`` cells in turn, in mantissa order: ``normals`` and
    ``defects`` count pixels, ``weights`` sums ``1/size(region)`` over the defect pixels, ``values`` is the
    bit pattern of one score of the cell (meaningless while empty) and ``mixed`` whether the cell has seen
    another score.
    """

    slots: np.ndarray
    shifts: np.ndarray
    normals: np.ndarray
    defects: np.ndarray
    weights: np.ndarray
    values: np.ndarray
    mixed: np.ndarray

    @classmethod
    def empty(cls) -> BinadeCells:
        no_slots, no_cells = np.zeros(0, np.int64), np.zeros(0)
        return cls(no_slots, no_slots, no_cells, no_cells, no_cells, no_slots, np.zeros(0, bool))

    @classmethod
    def zeros(cls, slots: np.ndarray, shifts: np.ndarray) -> BinadeCells:
        size = int(np.left_shift(1, _MANTISSA_BITS - shifts).sum())
        counts = (np.zeros(size) for _ in range(3))
        return cls(slots, shifts, *counts, np.zeros(size, np.int64), np.zeros(size, bool))

    @property
    def sizes(self) -> np.ndarray:
        return np.left_shift(1, _MANTISSA_BITS - self.shifts)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate(([0], np.cumsum(self.sizes)))

    def slot_masses(self) -> np.ndarray:
        """Pixels per allocated slot."""
        if self.slots.size == 0:
            return np.zeros(0)
        return np.add.reduceat(self.normals + self.defects, self.offsets[:-1])

    # ------------------------------------------------------------------------------- combining cells
    def _grouped(self, part: slice, group: int) -> tuple[np.ndarray, ...]:
        """The cells of ``part`` merged in aligned groups of ``group``."""
        counts = [column[part].reshape(-1, group) for column in (self.normals, self.defects, self.weights)]
        values, mixed = self.values[part].reshape(-1, group), self.mixed[part].reshape(-1, group)
        occupied = (counts[0] + counts[1]) > 0
        first = values[np.arange(values.shape[0]), np.argmax(occupied, axis=1)]
        other_score = (occupied & (values != first[:, None])).any(axis=1)
        return (*(column.sum(axis=1) for column in counts), first, mixed.any(axis=1) | other_score)

    def regridded(self, slots: np.ndarray, shifts: np.ndarray) -> BinadeCells:
        """The same pixels in ``slots`` (a superset of ours) at ``shifts`` (each >= ours)."""
        own = {int(slot): index for index, slot in enumerate(self.slots)}
        offsets, columns = self.offsets, [[] for _ in range(5)]
        for slot, shift in zip(slots.tolist(), shifts.tolist(), strict=True):
            size = 1 << (_MANTISSA_BITS - shift)
            if slot in own:
                index = own[slot]
                group = int(self.sizes[index]) // size
                parts = self._grouped(slice(offsets[index], offsets[index + 1]), group)
            else:
                parts = (*(np.zeros(size) for _ in range(3)), np.zeros(size, np.int64), np.zeros(size, bool))
            for column, part in zip(columns, parts, strict=True):
                column.append(part)
        joined = [np.concatenate(column) for column in columns]
        return BinadeCells(slots, shifts, *joined)

    def with_slots(self, slot_masses: dict[int, float], capacity: int) -> BinadeCells:
        """This table with every slot of ``slot_masses`` (slot id -> pixels about to arrive) allocated and
        at most ``capacity`` cells in all (or one per slot, if there are more slots than that).

        A new slot gets about ``capacity`` times its share of all pixels (seen and arriving) in cells; then,
        while the cells exceed the capacity, the slots with the most cells per pixel (within a factor 2 of
        the most) halve their cells.
        """
        own = dict(zip(self.slots.tolist(), self.shifts.tolist(), strict=True))
        masses = dict(zip(self.slots.tolist(), self.slot_masses().tolist(), strict=True))
        for slot, mass in slot_masses.items():
            masses[slot] = masses.get(slot, 0.0) + mass
        total = max(sum(masses.values()), 1.0)
        shifts = dict(own)
        for slot in slot_masses:
            if slot not in own:
                wanted_cells = max(1.0, capacity * masses[slot] / total)
                shifts[slot] = max(0, _MANTISSA_BITS - int(np.ceil(np.log2(wanted_cells))))
        slots = np.array(sorted(shifts), dtype=np.int64)
        shift_array = np.array([shifts[slot] for slot in slots.tolist()], dtype=np.int64)
        mass_array = np.array([masses[slot] for slot in slots.tolist()])
        while (
            np.left_shift(1, _MANTISSA_BITS - shift_array).sum() > capacity
            and (shift_array < _MANTISSA_BITS).any()
        ):
            cells = np.left_shift(1, _MANTISSA_BITS - shift_array).astype(np.float64)
            cells_per_pixel = np.where(shift_array < _MANTISSA_BITS, cells / (mass_array + 1.0), 0.0)
            shift_array[cells_per_pixel >= 0.5 * cells_per_pixel.max()] += 1
        if np.array_equal(slots, self.slots) and np.array_equal(shift_array, self.shifts):
            return self
        return self.regridded(slots, shift_array)

    @staticmethod
    def merged(tables: list[BinadeCells]) -> BinadeCells:
        """One table of the pixels of all ``tables``: each slot at the coarsest shift any of them has."""
        tables = [table for table in tables if table.slots.size]
        if len(tables) <= 1:
            return tables[0] if tables else BinadeCells.empty()
        shifts: dict[int, int] = {}
        for table in tables:
            for slot, shift in zip(table.slots.tolist(), table.shifts.tolist(), strict=True):
                shifts[slot] = max(shift, shifts.get(slot, 0))
        slots = np.array(sorted(shifts), dtype=np.int64)
        shift_array = np.array([shifts[slot] for slot in slots.tolist()], dtype=np.int64)
        merged = BinadeCells.zeros(slots, shift_array)
        for part in (table.regridded(slots, shift_array) for table in tables):
            occupied_before = (merged.normals + merged.defects) > 0
            occupied = (part.normals + part.defects) > 0
            other_score = occupied_before & occupied & (merged.values != part.values)
            merged.mixed[:] |= part.mixed | other_score
            merged.values[~occupied_before] = part.values[~occupied_before]
            for name in ("normals", "defects", "weights"):
                getattr(merged, name)[:] += getattr(part, name)
        return merged

    # ------------------------------------------------------------------------------- counting
    def added(
        self, scores: np.ndarray, defect: np.ndarray, region_sizes: np.ndarray, capacity: int
    ) -> BinadeCells:
        """The table with 1-D ``scores`` vs the boolean ``defect`` counted in (``region_sizes``: the region
        size of each defect pixel, in ``scores[defect]`` order): this table, its arrays updated in place,
        or a copy with the slots first seen here allocated."""
        bits = score_bits(scores)
        slot_index = (bits >> _MANTISSA_BITS) - _FIRST_SLOT
        counts_per_slot = np.bincount(slot_index, minlength=_NUM_SLOTS)
        table = self
        if np.count_nonzero(counts_per_slot) > np.count_nonzero(counts_per_slot[self.slots - _FIRST_SLOT]):
            arriving = {
                int(index) + _FIRST_SLOT: float(counts_per_slot[index])
                for index in np.flatnonzero(counts_per_slot)
            }
            table = self.with_slots(arriving, capacity)
        cell_offset = np.zeros(_NUM_SLOTS, dtype=np.int64)
        cell_shift = np.zeros(_NUM_SLOTS, dtype=np.int64)
        cell_offset[table.slots - _FIRST_SLOT] = table.offsets[:-1]
        cell_shift[table.slots - _FIRST_SLOT] = table.shifts
        cells = bits & _MANTISSA_MASK
        cells >>= cell_shift[slot_index]
        cells += cell_offset[slot_index]
        # Scores of cells not yet known to hold two scores: a cell empty so far adopts one of them, then
        # any pixel scoring differently marks its cell mixed.
        unsure = np.flatnonzero(~table.mixed[cells])
        if unsure.size:
            unsure_cells, unsure_bits = cells[unsure], bits[unsure]
            empty_so_far = (table.normals + table.defects)[unsure_cells] == 0
            table.values[unsure_cells[empty_so_far]] = unsure_bits[empty_so_far]
            table.mixed[unsure_cells[table.values[unsure_cells] != unsure_bits]] = True
        np.add(table.normals, np.bincount(cells, minlength=table.normals.size), out=table.normals)
        # Defect pixels are few: move them from the normal counts one by one.
        defect_cells = cells[defect]
        np.subtract.at(table.normals, defect_cells, 1.0)
        np.add.at(table.defects, defect_cells, 1.0)
        np.add.at(table.weights, defect_cells, 1.0 / region_sizes)
        return table

    # ------------------------------------------------------------------------------- results
    def score_rows(self, num_regions: int) -> ScoreRows:
        """Non-empty cells, highest scores first, as :class:`ScoreRows`; a cell of one score is exact."""
        offsets, ranges = self.offsets, []
        # Descending score: slots from the highest in value order; inside a non-negative slot, descending
        # cell index (mantissa); inside a negative one, ascending (a larger mantissa is a lower score).
        for index in np.argsort(_value_order(self.slots))[::-1]:
            cells = np.arange(offsets[index], offsets[index + 1])
            ranges.append(cells if self.slots[index] < 0 else cells[::-1])
        order = np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.intp)
        order = order[(self.normals + self.defects)[order] > 0]
        slot_position = np.searchsorted(offsets, order, side="right") - 1
        slot_of_cell, shift_of_cell = self.slots[slot_position], self.shifts[slot_position]
        first_mantissa = (order - offsets[slot_position]) << shift_of_cell
        last_mantissa = first_mantissa | ((np.int64(1) << shift_of_cell) - 1)
        exponent_bits = slot_of_cell << _MANTISSA_BITS
        first_value = (exponent_bits | first_mantissa).view(np.float64)
        last_value = (exponent_bits | last_mantissa).view(np.float64)
        # A negative slot's first mantissa is its highest score; an exact cell is its one score.
        negative, exact = slot_of_cell < 0, ~self.mixed[order]
        own_value = self.values[order].view(np.float64)
        lower = np.where(exact, own_value, np.where(negative, last_value, first_value))
        upper = np.where(exact, own_value, np.where(negative, first_value, last_value))
        normals, defects, weights = self.normals[order], self.defects[order], self.weights[order]
        return ScoreRows(
            normals_above=np.cumsum(normals) - normals,
            normals=normals,
            defects=defects,
            overlap_weights=weights,
            exact=exact,
            lower=lower,
            upper=upper,
            num_normal=int(normals.sum()),
            num_defect=int(defects.sum()),
            num_regions=num_regions,
        )

    # ------------------------------------------------------------------------------- state form
    def header(self) -> np.ndarray:
        """``[number of slots, slot ids..., shifts...]``: with the cell columns, enough to rebuild."""
        return np.concatenate(([self.slots.size], self.slots, self.shifts)).astype(np.int64)

    @staticmethod
    def from_state(headers: np.ndarray, *columns: np.ndarray) -> list[BinadeCells]:
        """The tables of concatenated headers and cell columns (normals, defects, weights, values, mixed;
        several tables after a merge or a sync)."""
        tables, position, offset = [], 0, 0
        while position < headers.size:
            num_slots = int(headers[position])
            slots = headers[position + 1 : position + 1 + num_slots]
            shifts = headers[position + 1 + num_slots : position + 1 + 2 * num_slots]
            position += 1 + 2 * num_slots
            part = slice(offset, offset + int(np.left_shift(1, _MANTISSA_BITS - shifts).sum()))
            tables.append(BinadeCells(slots, shifts, *(column[part] for column in columns)))
            offset = part.stop
        stored = columns[0].size
        if offset != stored:
            raise ValueError(f"corrupt pixel-metric cells: headers for {offset} cells, {stored} stored.")
        return tables
