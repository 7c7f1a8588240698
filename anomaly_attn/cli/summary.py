"""The few lines a job ends with: what it measured, next to the residual, and where its files are."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# (label, metrics.json key) of the rows, each with the plain residual's value beside it.
_ROWS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("pixel AUPRO", "pixel_aupro"))
_BASELINE = "residual_l2"
_PAIR = f"selected - {_BASELINE}"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


def _interval(block: Mapping[str, Any] | None) -> str:
    """`` [low, high]`` of an interval entry, or "" without one."""
    if not isinstance(block, Mapping) or "low" not in block:
        return ""
    return f" [{_number(block['low'])}, {_number(block['high'])}]"


def _difference_line(label: str, key: str, metrics: Mapping[str, Any]) -> str | None:
    """``selected - residual_l2  +0.012 [0.004, 0.020]  interval excludes 0`` from the paired intervals."""
    paired = ((metrics.get("intervals") or {}).get("paired") or {}).get(_PAIR, {}).get(key)
    if not paired or key not in metrics or key not in (metrics.get("controls") or {}).get(_BASELINE, {}):
        return None
    difference = metrics[key] - metrics["controls"][_BASELINE][key]
    verdict = "interval excludes 0" if paired["low"] > 0 or paired["high"] < 0 else "no difference shown"
    return f"    {label:<11}  {difference:+.3f}{_interval(paired)}  {verdict}"


def run_summary(metrics: Mapping[str, Any], run_dir: str | Path) -> str:
    """The summary of one finished job from its ``metrics.json`` content: each metric with its bootstrap
    interval (metrics.json ``intervals``), the residual's beside it, and the paired difference."""
    where = "/".join(str(metrics[key]) for key in ("dataset", "category") if metrics.get(key) is not None)
    lines = [f"Finished {where} ({metrics.get('model', 'model')}):"]
    selected = metrics.get("selected_map") or metrics.get("variant")
    if selected:
        lines.append(f"  selected map   {selected}")
    baseline = (metrics.get("controls") or {}).get(_BASELINE, {})
    maps = (metrics.get("intervals") or {}).get("maps") or {}
    for label, key in _ROWS:
        if key in metrics:
            mine = _interval(maps.get("selected", {}).get(key))
            theirs = _interval(maps.get(_BASELINE, {}).get(key))
            beside = f"   ({_BASELINE} {_number(baseline[key])}{theirs})" if key in baseline else ""
            lines.append(f"  {label:<13}  {_number(metrics[key])}{mine}{beside}")
    if "image_auroc" in metrics and "pixel_auroc" not in metrics:
        lines.append("  pixel metrics  none: the test set has no pixel masks (image metrics only)")
    differences = [line for label, key in _ROWS if (line := _difference_line(label, key, metrics))]
    if differences:
        level = (metrics.get("intervals") or {}).get("level", 0.95)
        lines.append(f"  {_PAIR} (paired, {level:.0%} bootstrap interval over test images):")
        lines.extend(differences)
    lines.extend(_faithfulness_lines(metrics.get("faithfulness")))
    lines.append(f"  run folder     {Path(run_dir)}")
    if metrics.get("checkpoint"):
        lines.append(f"  checkpoint     {metrics['checkpoint']}")
    return "\n".join(lines)


def _faithfulness_lines(block: Mapping[str, Any] | None) -> list[str]:
    """The selected map's deletion AUC next to a random map's and the residual's, and whether it changes
    with the model's weights randomized (metrics.json ``faithfulness``); none without the block."""
    maps = (block or {}).get("maps") or {}
    selected = maps.get("selected")
    if not selected:
        return []
    random = (block.get("random") or {}).get("deletion_auc")
    residual = (maps.get(_BASELINE) or {}).get("deletion_auc")
    randomization = selected.get("randomization") or {}
    lines = [
        f"  faithfulness   on {block.get('n_images')} anomalous test images (analysis only):",
        f"    deletion AUC {_number(selected.get('deletion_auc'))} (random map {_number(random)}, "
        f"{_BASELINE} {_number(residual)}; lower: the map finds what the image score reacts to)",
    ]
    if randomization:
        spearman = (randomization.get("spearman") or [None])[-1]
        lines.append(f"    randomized model: Spearman {_number(spearman)} to the trained map, "
                     f"{randomization.get('verdict')}")
    return lines
