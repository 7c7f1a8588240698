"""The faithfulness table of a report (``report/faithfulness.md``, a section of the HTML page): for each
checked map, over the runs whose metrics.json holds a ``faithfulness`` block, how fast deleting its top
pixels lowers the model's image score, next to a random map and the residual, and whether the map
changes when the model's weights are randomized (:mod:`anomaly_attn.maps.faithfulness`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from anomaly_attn.reporting.runs import Run

# The table's rows, in this order, then any other map name the runs hold.
MAP_ORDER = (
    "selected", "mean_abs_cam", "gradcam_abs", "gradcam_pp", "layercam", "residual_l2", "image_highpass"
)

LEGEND = (
    "Deletion AUC: the mean share of the image anomaly score left while the map's top 1-20 % pixels are "
    "replaced (lower: the map points at what the score reacts to); insertion AUC: the share regained "
    "while they are put back into the replaced image (higher is better). \"− random\" and \"− residual_l2\": "
    "the paired per-image difference of deletion AUCs, mean over runs; \"excl. 0\": in how many runs "
    "its 95 % bootstrap interval over the checked images excludes 0 (negative: more faithful than the "
    "other map). Randomization: mean Spearman correlation of the map with the same map of the model "
    "with every layer re-initialised (Adebayo et al. 2018); verdicts: changes, unchanged (Spearman ≥ "
    "the run's `faithfulness.unchanged_spearman`: the map does not depend on what the model learned), "
    "model-independent (the map uses no model). Analysis on a seeded subset of anomalous test images, "
    "never used to choose."
)


def _numbers(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]


def _mean(values: Sequence[Any]) -> str:
    numbers = _numbers(values)
    if not numbers:
        return "–"
    mean = sum(numbers) / len(numbers)
    if len(numbers) == 1:
        return f"{mean:.3f}"
    spread = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))
    return f"{mean:.3f} ± {spread:.3f}"


def _paired(entries: Sequence[dict[str, Any]], key: str) -> str:
    """``-0.412 (excl. 0: 3/3)``: mean paired difference over runs and how many intervals exclude 0."""
    pairs = [e[key] for e in entries if isinstance(e.get(key), dict)]
    means = _numbers([p.get("mean") for p in pairs])
    if not means:
        return "–"
    excluding = sum(
        1 for p in pairs
        if len(_numbers([p.get("low"), p.get("high")])) == 2 and (p["low"] > 0 or p["high"] < 0)
    )
    return f"{sum(means) / len(means):+.3f} (excl. 0: {excluding}/{len(pairs)})"


def _verdicts(entries: Sequence[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for entry in entries:
        verdict = (entry.get("randomization") or {}).get("verdict")
        if verdict:
            counts[verdict] = counts.get(verdict, 0) + 1
    return ", ".join(f"{verdict} {count}" for verdict, count in sorted(counts.items())) or "–"


def _last(entry: dict[str, Any], key: str) -> Any:
    values = (entry.get("randomization") or {}).get(key) or []
    return values[-1] if values else None


def entries_by_map(runs: Sequence[Run]) -> dict[str, list[dict[str, Any]]]:
    """Per checked map name, its faithfulness entry of every complete run that has one."""
    by_map: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run.status != "complete":
            continue
        for name, entry in ((run.value("faithfulness") or {}).get("maps") or {}).items():
            by_map.setdefault(name, []).append(entry)
    order = {name: index for index, name in enumerate(MAP_ORDER)}
    return dict(sorted(by_map.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


HEADER = (
    "map", "runs", "deletion AUC", "− random", "− residual_l2", "insertion AUC", "randomized: Spearman",
    "SSIM", "verdicts",
)


def faithfulness_markdown(runs: Sequence[Run]) -> str:
    """The table ('' when no run has a faithfulness block)."""
    by_map = entries_by_map(runs)
    if not by_map:
        return ""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for name, entries in by_map.items():
        labels = sorted({str(e.get("label")) for e in entries})
        more = ", …" if len(labels) > 3 else ""
        shown = name if labels == [name] else f"{name} ({', '.join(labels[:3])}{more})"
        lines.append("| " + " | ".join([
            shown, str(len(entries)),
            _mean([e.get("deletion_auc") for e in entries]),
            _paired(entries, "deletion_vs_random"),
            "–" if name == "residual_l2" else _paired(entries, "deletion_vs_residual_l2"),
            _mean([e.get("insertion_auc") for e in entries]),
            _mean([_last(e, "spearman") for e in entries]),
            _mean([_last(e, "ssim") for e in entries]),
            _verdicts(entries),
        ]) + " |")
    random = [(r.value("faithfulness") or {}).get("random") or {} for r in runs if r.status == "complete"]
    lines.append(
        f"| random map | {len([e for e in random if e])} | {_mean([e.get('deletion_auc') for e in random])} "
        f"| | | {_mean([e.get('insertion_auc') for e in random])} | | | |"
    )
    return "\n".join([*lines, "", LEGEND]) + "\n"
