"""Image/pixel AUROC, AUPRO, F1-max and IoU: array functions and bounded-memory torchmetrics Metrics."""

from anomaly_attn.metrics.functional import (
    aupro,
    f1_max,
    f1_max_threshold,
    image_auroc,
    iou,
    pixel_auroc,
    pixel_metrics,
)
from anomaly_attn.metrics.streaming import AnomalyImageMetrics, AnomalyPixelMetrics

__all__ = [
    "AnomalyImageMetrics",
    "AnomalyPixelMetrics",
    "aupro",
    "f1_max",
    "f1_max_threshold",
    "image_auroc",
    "iou",
    "pixel_auroc",
    "pixel_metrics",
]
