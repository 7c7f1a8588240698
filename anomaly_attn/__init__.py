"""Unsupervised visual anomaly detection and localization with gradient-based attention on
reconstruction models. Entry points: ``python -m anomaly_attn`` lists them."""

from anomaly_attn.version import __version__, provenance

__all__ = ["__version__", "provenance"]
