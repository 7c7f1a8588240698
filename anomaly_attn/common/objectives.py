"""What map selection maximises on validation data, defined once for the selection and for
``hparams_search`` (which reads it from metrics.json before torch is imported)."""

from __future__ import annotations

from collections.abc import Mapping

OBJECTIVES = ("pixel_aupro", "pixel_auroc", "mean_auroc_aupro")


def objective_value(metrics: Mapping[str, float], objective: str) -> float:
    """``objective`` of a map's pixel metrics: one of them, or the mean of pixel AUROC and AUPRO."""
    if objective == "mean_auroc_aupro":
        return 0.5 * (float(metrics["pixel_auroc"]) + float(metrics["pixel_aupro"]))
    return float(metrics[objective])
