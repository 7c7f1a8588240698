"""Two runs with the same seed on CPU write the same numbers (to 1e-6): training, synthetic validation,
map selection, thresholds and every test metric."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from anomaly_attn.jobs.train import train_job
from tests.conftest import compose_cfg, tiny_overrides

# Fields that legitimately differ between two runs: wall-clock timings and where the run was written.
VOLATILE = ("timing", "checkpoint", "provenance")


def numeric_leaves(node: Any, prefix: str = "") -> dict[str, float]:
    if isinstance(node, dict):
        out: dict[str, float] = {}
        for key, value in node.items():
            if (not prefix and key in VOLATILE) or key == "seconds" or key.endswith(("_s", "_per_s")):
                continue  # wall-clock time
            out.update(numeric_leaves(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):
        out = {}
        for index, value in enumerate(node):
            out.update(numeric_leaves(value, f"{prefix}{index}."))
        return out
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return {prefix[:-1]: float(node)}
    return {prefix[:-1]: node}  # strings (the selected map, layer, ...) must agree exactly too


@pytest.mark.slow
def test_same_seed_twice_gives_the_same_metrics(tmp_path: Path) -> None:
    overrides = tiny_overrides(category="brick", **{"dataset.n_train": "40", "trainer.max_epochs": "2"})
    runs = []
    for name in ("a", "b"):
        train_job(compose_cfg(overrides), tmp_path / name)
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    first, second = (numeric_leaves(run) for run in runs)
    assert set(first) == set(second)
    assert len(first) > 100 and "selection.seconds" not in first
    expected = {"pixel_auroc", "image_auroc", "validation.pixel_auroc", "thresholds.selected.image"}
    assert expected <= set(first)
    differing = {
        key: (first[key], second[key])
        for key in first
        if (
            isinstance(first[key], float)
            and not (math.isnan(first[key]) and math.isnan(second[key]))
            and abs(first[key] - second[key]) > 1e-6
        )
        or (not isinstance(first[key], float) and first[key] != second[key])
    }
    assert differing == {}
    assert runs[0]["provenance"]["config_digest"] == runs[1]["provenance"]["config_digest"]
