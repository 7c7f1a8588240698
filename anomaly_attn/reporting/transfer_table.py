"""Which image-score rule to trust on a kind of defect the validation set has not seen, from validation
data only: metrics.json's ``selection.image_score_transfer`` (``maps.prior_test.image_score_transfer``)
of many runs, as one Markdown table.

Each run holds, per rule of ``selection.image_score_confirm``, its mean gain over the prior's image
AUROC on a held-out generator's validation images (the rule chose on the other generators). Here: per
rule the mean over runs with a 95 % bootstrap interval over runs, and its paired difference from
``same`` (the default) with its interval. A rule is better than ``same`` only where that interval lies
above 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from anomaly_attn.maps.selection_result import IMAGE_SCORE_CONFIRM
from anomaly_attn.metrics.intervals import interval
from anomaly_attn.reporting.runs import Run

RESAMPLES = 2000
MIN_RUNS = 5
"""Fewer runs in a group: its mean without an interval (a bootstrap over 2-4 runs says nothing)."""


def transfer_gains(runs: list[Run]) -> list[dict[str, float]]:
    """Per complete run with an estimate: each rule's mean gain over its held-out generators."""
    gains = []
    for run in runs:
        rules = run.value("selection.image_score_transfer.rules") if run.status == "complete" else None
        if isinstance(rules, dict) and all(rule in rules for rule in IMAGE_SCORE_CONFIRM):
            gains.append({rule: float(rules[rule]["gain_mean"]) for rule in IMAGE_SCORE_CONFIRM})
    return gains


def _mean_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of the mean (resampling runs)."""
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    low, high = interval(draws)
    return float(values.mean()), low, high


def _cell(values: np.ndarray, mark: bool = False) -> str:
    """``+0.0123 [+0.0010, +0.0250]`` (``*``: the interval excludes 0, with ``mark``); the mean alone
    below ``MIN_RUNS`` runs."""
    if len(values) < MIN_RUNS:
        return f"{values.mean():+.4f} (n < {MIN_RUNS}: no interval)"
    mean, low, high = _mean_interval(values)
    star = "*" if mark and (low > 0 or high < 0) else ""
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]{star}"


def transfer_markdown(runs: list[Run], group: Callable[[Run], str] | None = None) -> list[str]:
    """The table (one block of rows per ``group`` of runs, and all runs), or [] without estimates."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group(run) if group else "all", []).append(run)
    if group and len(groups) > 1:
        groups["all"] = runs
    rows = []
    for name, members in groups.items():
        gains = transfer_gains(members)
        if not gains:
            continue
        same = np.asarray([g["same"] for g in gains])
        for rule in IMAGE_SCORE_CONFIRM:
            values = np.asarray([g[rule] for g in gains])
            cells = [name, rule, str(len(gains)), _cell(values)]
            cells.append("–" if rule == "same" else _cell(values - same, mark=True))
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "Validation only: for each generator of the synthetic validation set in turn, each rule chose the "
        "image score on the other generators' images; gain = its image AUROC minus the prior's on the "
        "held-out generator's images (0 where the prior was kept), averaged over generators. Mean over "
        "runs with a 95 % bootstrap interval over runs (from 5 runs on); * = the interval of the difference "
        "excludes 0.\n",
        "| runs | rule | n | gain over the prior | − same |",
        "|---|---|---|---|---|",
        *rows,
    ]
