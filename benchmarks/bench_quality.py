"""Does the faster training step keep reconstruction quality? The same training job with the speed
options on (``trainer.channels_last=true``, ``trainer.cpu_bf16=auto``: bf16 autocast only on CPUs with
native bf16) and off (contiguous memory, float32), same seed, same data.

    python -m benchmarks.bench_quality          # prints the rows

Compared: the best validation loss of the fit (``val_loss`` of the CSV log, held-out normal images) and
the selected map's score on the synthetic validation set (``metrics.json`` ``validation``, the objective
selection maximised). Test metrics are not looked at. The targets were set before measuring: a validation
loss at most 10 % higher and a validation objective at most 0.02 lower with the speed options, i.e. within
what a different order of floating-point sums moves a short training run.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.engine.pipeline import train_job
from benchmarks.bench_train import compose_config, describe, pipeline_settings

OVERRIDES = (
    "experiment=quickstart",
    "category=brick",
    "logger=csv",
    "visualization.max_overlays=0",
    "validation.figure_samples=0",
)
SPEED_OFF = ("trainer.channels_last=false", "trainer.cpu_bf16=false")


def best_val_loss(run_dir: Path) -> float:
    with (run_dir / "csv" / "metrics.csv").open() as handle:
        losses = [float(row["val_loss"]) for row in csv.DictReader(handle) if row.get("val_loss")]
    return min(losses) if losses else math.nan


def quality(overrides: list[str]) -> dict:
    """Best validation loss, the selected map and its validation objective of one training job."""
    cfg = compose_config(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        train_job(cfg, run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        objective = metrics["selection"]["objective"]
        return {
            "val_loss": best_val_loss(run_dir),
            "objective": objective,
            "validation": objective_value(metrics["validation"], objective),
            "selected_map": metrics.get("selected_map"),
            "settings": describe(pipeline_settings(cfg)),
        }


def run(max_epochs: int = 8, extra: tuple[str, ...] = ()) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``; ``extra``
    overrides (e.g. a smaller training set) apply to both jobs."""
    base = [*OVERRIDES, f"trainer.max_epochs={max_epochs}", *extra]
    on = quality(base)
    off = quality([*base, *SPEED_OFF])
    where = f"textures/brick, quickstart, {max_epochs} epochs"
    loss_ratio = on["val_loss"] / off["val_loss"]
    drop = on["validation"] - off["validation"]
    return [
        {
            "benchmark": f"best validation loss, speed options on ({on['settings']}), {where}",
            "ours": on["val_loss"],
            "unit": "",
            "reference": f"speed options off ({off['settings']})",
            "reference_value": off["val_loss"],
            "ratio": loss_ratio,
            "target": "<= 1.10",
            "passed": loss_ratio <= 1.10,
        },
        {
            "benchmark": (
                f"selected map's validation {on['objective']}, speed on ({on['selected_map']}) vs off "
                f"({off['selected_map']}), {where}"
            ),
            "ours": on["validation"],
            "unit": "",
            "reference": "speed options off",
            "reference_value": off["validation"],
            "ratio": on["validation"] / off["validation"],
            "target": "on - off >= -0.02",
            "passed": drop >= -0.02,
        },
    ]


if __name__ == "__main__":
    from benchmarks.run_all import markdown_table

    print(markdown_table(run()))
