"""The few lines a job ends with: what it measured, next to the residual, and where its files are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (label, metrics.json key) of the rows, each with the plain residual's value beside it.
_ROWS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("pixel AUPRO", "pixel_aupro"))
_BASELINE = "residual_l2"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def run_summary(metrics: Mapping[str, Any], run_dir: str | Path) -> str:
    """The summary of one finished job from its ``metrics.json`` content."""
    where = "/".join(str(metrics[key]) for key in ("dataset", "category") if metrics.get(key) is not None)
    lines = [f"Finished {where} ({metrics.get('model', 'model')}):"]
    selected = metrics.get("selected_map") or metrics.get("variant")
    if selected:
        lines.append(f"  selected map   {selected}")
    baseline = (metrics.get("controls") or {}).get(_BASELINE, {})
    for label, key in _ROWS:
        if key in metrics:
            beside = f"   ({_BASELINE} {_number(baseline[key])})" if key in baseline else ""
            lines.append(f"  {label:<13}  {_number(metrics[key])}{beside}")
    lines.append(f"  run folder     {Path(run_dir)}")
    if metrics.get("checkpoint"):
        lines.append(f"  checkpoint     {metrics['checkpoint']}")
    return "\n".join(lines)
