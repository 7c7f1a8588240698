"""Exact pixel AUROC and AUPRO of many maps against one fixed set of masks, with image weights.

Choosing a map on validation data scores hundreds of candidate maps against the same masks, and asks
whether the best one is better than a reference beyond the noise of a small validation set (a paired
bootstrap over images). Both are cheap once the masks are prepared: the 8-connected defect regions are
labelled once (:class:`MaskSet`); each map is sorted once (:class:`RankedMap`); a bootstrap resample is
then a vector of per-image weights (how often each image was drawn) and costs a few cumulative sums,
with no new sort.

Definitions are the sort-based ones (ties grouped, the trapezoid rule): pixel AUROC over all pixels;
AUPRO as in MVTec AD (per-region overlap averaged over all regions of all images, against the false
positive rate over every mask-0 pixel, integrated to ``fpr_limit`` with the end point interpolated and
divided by ``fpr_limit``). With all weights 1 they equal ``sklearn.metrics.roc_auc_score`` and the MVTec
reference exactly (tested).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)


def _as_array(values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values)


class MaskSet:
    """Binary masks (N×H×W or N×1×H×W) prepared once: per pixel its image, label and defect region."""

    def __init__(self, masks: np.ndarray | torch.Tensor) -> None:
        array = _as_array(masks)
        if array.ndim == 4:
            array = array[:, 0]
        if array.ndim != 3:
            raise ValueError(f"masks must be N×H×W or N×1×H×W, got shape {array.shape}")
        defect = array > 0.5
        self.shape = defect.shape
        self.num_images = defect.shape[0]
        self.positive = defect.ravel()
        pixels_per_image = defect.shape[1] * defect.shape[2]
        self.image_index = np.repeat(np.arange(self.num_images), pixels_per_image)
        # Region id per defect pixel (0: none), unique over all images; region sizes and images.
        region = np.zeros(defect.shape, dtype=np.int64)
        sizes: list[np.ndarray] = []
        region_images: list[np.ndarray] = []
        offset = 0
        for index in range(self.num_images):
            labels, count = ndimage.label(defect[index], structure=_EIGHT_CONNECTIVITY)
            if count:
                region[index] = np.where(labels > 0, labels + offset, 0)
                sizes.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
                region_images.append(np.full(count, index))
                offset += count
        self.region = region.ravel()
        self.region_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
        self.region_images = np.concatenate(region_images) if region_images else np.zeros(0, dtype=np.int64)
        self.num_regions = offset


class RankedMap:
    """One map sorted once against a :class:`MaskSet`; ``metrics(weights)`` for any image weights."""

    def __init__(self, maps: np.ndarray | torch.Tensor, masks: MaskSet) -> None:
        scores = _as_array(maps).ravel()  # sorted in their own precision: float32 sorts twice as fast
        if scores.size != masks.positive.size:
            raise ValueError(f"maps have {scores.size} pixels but the masks {masks.positive.size}")
        if not np.isfinite(scores).all():
            bad = int(masks.image_index[np.flatnonzero(~np.isfinite(scores))[0]])
            raise ValueError(f"map of image {bad} holds NaN or inf values")
        self.masks = masks
        order = np.argsort(-scores)  # ties are grouped below, so the sort need not be stable
        sorted_scores = scores[order]
        # The last position of every group of equal scores: curves only change between groups.
        self.group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
        self.image = masks.image_index[order]
        self.positive = masks.positive[order]
        region = masks.region[order]
        inverse_size = np.zeros(masks.num_regions + 1)
        inverse_size[1:] = 1.0 / np.maximum(masks.region_sizes, 1)
        self.inverse_region_size = inverse_size[region]

    def metrics(self, weights: np.ndarray | None = None, fpr_limit: float = 0.3) -> dict[str, float]:
        """Pixel AUROC and AUPRO with each image counted ``weights[i]`` times (default: once)."""
        masks = self.masks
        image_weights = np.ones(masks.num_images) if weights is None else np.asarray(weights, float)
        pixel_weights = image_weights[self.image]
        negative_weights = np.where(self.positive, 0.0, pixel_weights)
        positive_weights = pixel_weights - negative_weights
        total_negative, total_positive = negative_weights.sum(), positive_weights.sum()
        if total_negative == 0 or total_positive == 0:
            return {"pixel_auroc": float("nan"), "pixel_aupro": float("nan")}
        ends = self.group_ends
        fpr = np.r_[0.0, np.cumsum(negative_weights)[ends] / total_negative]
        tpr = np.r_[0.0, np.cumsum(positive_weights)[ends] / total_positive]
        auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
        region_count = float(image_weights[masks.region_images].sum())
        pro = np.r_[0.0, np.cumsum(positive_weights * self.inverse_region_size)[ends] / region_count]
        return {"pixel_auroc": auroc, "pixel_aupro": _area_up_to(fpr, pro, fpr_limit) / fpr_limit}


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Exact AUROC of one score per item (ties count half), item ``i`` counted ``weights[i]`` times;
    nan when one class has no weight. For the many small image-level AUROCs of map selection."""
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    weights = np.ones(len(scores)) if weights is None else np.asarray(weights, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    positive = np.where(labels[order], weights[order], 0.0)
    negative = weights[order] - positive
    total_positive, total_negative = positive.sum(), negative.sum()
    if total_positive == 0 or total_negative == 0:
        return float("nan")
    fpr = np.r_[0.0, np.cumsum(negative)[ends] / total_negative]
    tpr = np.r_[0.0, np.cumsum(positive)[ends] / total_positive]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under (x, y) for x in [0, limit], the point at ``limit`` interpolated."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < len(x):
        following = int(np.argmax(~inside))
        x0, x1, y0, y1 = x[following - 1], x[following], y[following - 1], y[following]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
