"""What the test step keeps for the bootstrap intervals of a run (``metrics.intervals``): per test image,
each map (area-downsampled to at most ``max_side`` pixels a side), its mask and its image score.

The point estimates in metrics.json are computed on the full-resolution maps; the intervals on these
(identical when the maps are at most ``max_side`` a side, as for every 256² category). Memory: one float32
map per image and map kind at ``max_side``² (26 MB per map kind for 100 images at 256²).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_attn.metrics.intervals import (
    PixelParts,
    image_metric_samples,
    paired_difference,
    pixel_metric_samples,
    resample_weights,
    summarize,
)

# The comparison every run reports: the selected map against the plain residual of its own model.
PAIRED = (("selected", "residual_l2"),)
# The maps whose per-image parts a run keeps in interval_parts.npz (``report --compare``).
SAVED_MAPS = ("selected", "residual_l2")
PARTS_FILE = "interval_parts.npz"
# PixelParts arrays stored as float32 (per-image counts and curves: exact, or within float32 rounding);
# the others (``pairs``, ``thresholds``, ...) keep their dtype.
_FLOAT32_PARTS = ("false_positives", "true_positives", "overlaps")
_SCALAR_PARTS = ("fpr_limit", "aupro_bound", "f1_bound")
_ARRAY_PARTS = tuple(f.name for f in dataclasses.fields(PixelParts) if f.name not in _SCALAR_PARTS)


@dataclass
class IntervalSettings:
    """``intervals`` of the config: ``resamples`` (0: off), ``level``, ``seed``, ``max_side``."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    max_side: int = 256

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> IntervalSettings:
        settings = cls(**dict(node or {}))
        if settings.resamples < 0 or not 0.5 <= settings.level < 1 or settings.max_side < 8:
            raise ValueError(
                f"intervals: resamples={settings.resamples} must be >= 0 (0: off), level={settings.level} "
                f"in [0.5, 1), max_side={settings.max_side} >= 8"
            )
        return settings


def _downsampled(tensor: Tensor, max_side: int) -> Tensor:
    """B×1×H×W area-downsampled so that its longer side is at most ``max_side``."""
    side = max(tensor.shape[-2:])
    if side <= max_side:
        return tensor
    size = [max(1, round(s * max_side / side)) for s in tensor.shape[-2:]]
    return F.interpolate(tensor.float(), size=size, mode="area")


@dataclass
class IntervalInputs:
    """Collects, batch by batch, what :meth:`intervals` needs; ``names``: the map kinds."""

    names: Sequence[str]
    settings: IntervalSettings
    fpr_limit: float = 0.3
    maps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    masks: list[np.ndarray] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    labels: list[int] = field(default_factory=list)
    with_mask: list[bool] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    _parts: dict[str, PixelParts | None] = field(default_factory=dict, repr=False)

    def update(
        self, maps: Mapping[str, Tensor], masks: Tensor, scores: Mapping[str, Tensor], labels: Tensor,
        with_masks: Tensor, paths: list[str] | None = None,
    ) -> None:
        if paths is not None:
            self.paths.extend(str(path) for path in paths)
        self._parts.clear()
        side = self.settings.max_side
        small_masks = (_downsampled(masks, side) >= 0.5).squeeze(1).cpu().numpy()
        self.masks.extend(small_masks)
        self.labels.extend(int(label) for label in labels.tolist())
        self.with_mask.extend(bool(flag) for flag in with_masks.tolist())
        for name in self.names:
            small = _downsampled(maps[name].detach(), side).squeeze(1).float().cpu().numpy()
            self.maps.setdefault(name, []).extend(small)
            self.scores.setdefault(name, []).extend(float(s) for s in scores[name].detach().cpu().tolist())

    def intervals(self) -> dict[str, Any]:
        """The ``intervals`` block of metrics.json: per map kind, ``{metric: {low, high, std}}``, and the
        paired selected − residual_l2 differences; how they were computed."""
        settings = self.settings
        labels = np.asarray(self.labels)
        weights = resample_weights(labels, settings.resamples, settings.seed)
        keep = np.flatnonzero(np.asarray(self.with_mask, dtype=bool))
        samples: dict[str, dict[str, np.ndarray]] = {}
        parts_bounds: dict[str, dict[str, float]] = {}
        for name in self.names:
            samples[name] = image_metric_samples(np.asarray(self.scores[name]), labels, weights)
            parts = self.pixel_parts(name)
            if parts is not None:
                samples[name].update(pixel_metric_samples(parts, weights[:, keep]))
                parts_bounds[name] = {"pixel_aupro": float(parts.aupro_bound),
                                      "pixel_f1_max": float(parts.f1_bound)}
        block: dict[str, Any] = {
            "method": "stratified bootstrap over test images (anomalous and normal resampled separately; "
                      "pixel metrics through image weights)",
            "resamples": settings.resamples, "level": settings.level, "seed": settings.seed,
            "map_side": settings.max_side, "grid_bounds": parts_bounds,
            "maps": {
                name: {metric: summarize(values, settings.level) for metric, values in by_metric.items()}
                for name, by_metric in samples.items()
            },
            "paired": {},
        }
        for first, second in PAIRED:
            if first in samples and second in samples:
                block["paired"][f"{first} - {second}"] = paired_difference(
                    samples[first], samples[second], settings.level
                )
        return block

    def pixel_parts(self, name: str) -> PixelParts | None:
        """The :class:`PixelParts` of map ``name`` over the images with a mask (None when none of them is
        anomalous), built once and kept (``intervals`` and ``save_parts`` share them)."""
        if name not in self._parts:
            labels, masked = np.asarray(self.labels), np.asarray(self.with_mask, dtype=bool)
            parts = None
            if masked.any() and (labels[masked] == 1).any():
                keep = np.flatnonzero(masked)
                parts = PixelParts.from_maps([self.maps[name][i] for i in keep],
                                             [self.masks[i] for i in keep], fpr_limit=self.fpr_limit)
            self._parts[name] = parts
        return self._parts[name]

    def save_parts(self, path: str | Path) -> None:
        """Write ``interval_parts.npz``: the labels, mask flags and paths of the test images (in test
        order) and, for the maps of ``SAVED_MAPS`` this run has, their image scores (``NAME.scores``) and
        pixel parts (``NAME.parts.FIELD``, over the images with a mask); :func:`load_parts` reads it."""
        arrays: dict[str, np.ndarray] = {
            "labels": np.asarray(self.labels, dtype=np.int8),
            "with_mask": np.asarray(self.with_mask, dtype=bool),
            "paths": np.asarray(self.paths, dtype=str),
        }
        for name in (n for n in SAVED_MAPS if n in self.names):
            arrays[f"{name}.scores"] = np.asarray(self.scores[name], dtype=np.float64)
            parts = self.pixel_parts(name)
            if parts is None:
                continue
            for part in _ARRAY_PARTS:
                value = getattr(parts, part)
                arrays[f"{name}.parts.{part}"] = value.astype(np.float32) if part in _FLOAT32_PARTS else value
            arrays[f"{name}.parts.scalars"] = np.array([parts.fpr_limit, parts.aupro_bound, parts.f1_bound])
        np.savez_compressed(path, **arrays)


def load_parts(path: str | Path) -> dict[str, Any]:
    """What :meth:`IntervalInputs.save_parts` wrote: ``labels``, ``with_mask``, ``paths`` (a list),
    ``scores`` ({map: image scores}) and ``parts`` ({map: PixelParts over the images with a mask, or
    None})."""
    with np.load(path, allow_pickle=False) as stored:
        data = {key: stored[key] for key in stored.files}
    loaded: dict[str, Any] = {
        "labels": data["labels"].astype(np.int64), "with_mask": data["with_mask"].astype(bool),
        "paths": [str(p) for p in data["paths"]], "scores": {}, "parts": {},
    }
    for name in SAVED_MAPS:
        if f"{name}.scores" not in data:
            continue
        loaded["scores"][name] = data[f"{name}.scores"]
        if f"{name}.parts.scalars" not in data:
            loaded["parts"][name] = None
            continue
        fields = {part: data[f"{name}.parts.{part}"] for part in _ARRAY_PARTS}
        fields.update({part: fields[part].astype(np.float64) for part in _FLOAT32_PARTS})
        fpr_limit, aupro_bound, f1_bound = (float(v) for v in data[f"{name}.parts.scalars"])
        loaded["parts"][name] = PixelParts(**fields, fpr_limit=fpr_limit, aupro_bound=aupro_bound,
                                           f1_bound=f1_bound)
    return loaded


def collect_intervals(inputs: IntervalInputs | None) -> dict[str, Any] | None:
    """``inputs.intervals()``, or None when intervals are off or nothing was collected."""
    if inputs is None or not inputs.labels or inputs.settings.resamples == 0:
        return None
    with torch.no_grad():
        return inputs.intervals()
