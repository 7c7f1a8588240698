"""Per-defect-type breakdown: image AUROC (normal vs that defect), pixel AUROC and AUPRO per defect type.

One bounded-memory :class:`AnomalyPixelMetrics` and one :class:`AnomalyImageMetrics` per type (the normal
type included); the metrics of a defect type are those of the normal images merged with that type's
images (``merge_state``), so no pixel is stored and each result equals the metric computed on that subset
of the test set (``pixel_error_bound``: 0.0 while the types' pixels are kept exactly). Memory per type: its
kept scores (up to ``exact_pixels``, 4 bytes per normal pixel), then at most ``num_bins`` cells of 33 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from anomaly_attn.metrics.functional import image_auroc
from anomaly_attn.metrics.score_rows import rows_aupro, rows_auroc
from anomaly_attn.metrics.streaming import AnomalyImageMetrics, AnomalyPixelMetrics


def _all_scores(metric: AnomalyImageMetrics) -> np.ndarray:
    """The image scores of every process."""
    with metric.sync_context():
        scores = metric.scores
        scores = torch.cat(scores) if isinstance(scores, list) and scores else scores
        return np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else [], dtype=np.float64)


class PerDefectMetrics(torch.nn.Module):
    """Accumulates one anomaly map kind's results per defect type.

    Args:
        fpr_limit: AUPRO's false-positive-rate limit.
        defect_types: types known in advance (all processes must create the same metrics under DDP;
            pass the test set's types). Types first seen in ``update`` are added then.
        normal_type: the ``defect_type`` of normal images.
    """

    def __init__(
        self, fpr_limit: float = 0.3, defect_types: Iterable[str] = (), normal_type: str = "good"
    ) -> None:
        super().__init__()
        self.fpr_limit = fpr_limit
        self.normal_type = normal_type
        self.types: list[str] = []
        # ModuleDict keys cannot hold every folder name (dots), so types are indexed.
        self.pixel = torch.nn.ModuleDict()
        self.image = torch.nn.ModuleDict()
        self.masked_images: dict[str, int] = {}  # per type key: images added to the pixel metrics
        for defect_type in [normal_type, *defect_types]:
            self._index(defect_type)

    def _index(self, defect_type: str, device: torch.device | None = None) -> str:
        if defect_type not in self.types:
            key = f"type{len(self.types)}"
            self.types.append(defect_type)
            self.pixel[key] = AnomalyPixelMetrics(fpr_limit=self.fpr_limit).to(device or "cpu")
            self.image[key] = AnomalyImageMetrics().to(device or "cpu")
        return f"type{self.types.index(defect_type)}"

    def update(
        self,
        maps: torch.Tensor,
        masks: torch.Tensor,
        scores: torch.Tensor,
        defect_types: Sequence[str],
        with_pixels: bool | Sequence[bool] | torch.Tensor = True,
    ) -> None:
        """Add a batch: maps/masks ``B×1×H×W``, image scores ``B``, each image's defect type.
        ``with_pixels``: whether each image (or all) has pixel ground truth; images without it count in
        the image metrics only."""
        flags = [bool(with_pixels)] * len(defect_types) if isinstance(with_pixels, bool) else [
            bool(flag) for flag in with_pixels
        ]
        for defect_type in dict.fromkeys(defect_types):
            key = self._index(defect_type, maps.device)
            members = [i for i, t in enumerate(defect_types) if t == defect_type]
            index = torch.tensor(members, device=maps.device)
            label = 0 if defect_type == self.normal_type else 1
            self.image[key].update(scores[index], torch.full((len(index),), label, device=maps.device))
            with_masks = [i for i in members if flags[i]]
            if with_masks:
                self.pixel[key].update(maps[with_masks], masks[with_masks])
                self.masked_images[key] = self.masked_images.get(key, 0) + len(with_masks)

    def compute(self, with_pixels: bool = True) -> dict[str, dict[str, Any]]:
        """``{defect: {n_images, image_auroc, pixel_auroc, pixel_aupro, pixel_error_bound}}`` for every
        anomalous type seen, each against all normal test images (pixel metrics only ``with_pixels``, and
        only for types with at least one mask: over that type's images that have one)."""
        normal_key = self._index(self.normal_type)
        normal_scores = _all_scores(self.image[normal_key])
        results: dict[str, dict[str, Any]] = {}
        for defect_type in sorted(t for t in self.types if t != self.normal_type):
            key = self._index(defect_type)
            defect_scores = _all_scores(self.image[key])
            if defect_scores.size == 0:
                continue
            labels = np.r_[np.zeros(normal_scores.size), np.ones(defect_scores.size)]
            entry: dict[str, Any] = {
                "n_images": int(defect_scores.size),
                "image_auroc": float(image_auroc(np.r_[normal_scores, defect_scores], labels)),
            }
            if with_pixels and self.masked_images.get(key, 0) > 0:
                entry["n_images_with_mask"] = self.masked_images[key]
                combined = AnomalyPixelMetrics(fpr_limit=self.fpr_limit, sync_on_compute=False)
                combined = combined.to(self.pixel[key].device)
                for part in (self.pixel[normal_key], self.pixel[key]):
                    with part.sync_context():
                        combined.merge_state(part)
                rows = combined.score_rows()
                auroc, auroc_bound = rows_auroc(rows)
                aupro, aupro_bound = rows_aupro(rows, self.fpr_limit)
                entry["pixel_auroc"], entry["pixel_aupro"] = auroc, aupro
                entry["pixel_error_bound"] = max(auroc_bound, aupro_bound)
            results[defect_type] = entry
        return results
