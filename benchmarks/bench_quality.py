"""Does the faster training step keep reconstruction quality? The same training job with the speed
options as shipped (``trainer.channels_last=true``, float32) and off (contiguous memory, float32), and
with bf16 autocast asked for (``trainer.cpu_bf16=true``) against the same off job, same seed, same data.

    python -m benchmarks.bench_quality          # prints the rows

Compared: the best validation loss of the fit (``val_loss`` of the CSV log, held-out normal images) and
the selected map's score on the synthetic validation set (``metrics.json`` ``validation``, the objective
selection maximised). Test metrics are not looked at. The targets were set before measuring: a validation
loss at most 10 % higher and a validation objective at most 0.02 lower with the speed options, i.e. within
what a different order of floating-point sums moves a short training run. Every row names the CPU it ran
on: bf16 rounds differently on each CPU family, and the bf16 rows are measured only on a CPU with native
bf16 (elsewhere bf16 is emulated, several times slower, and no one would train with it).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import tempfile
from pathlib import Path

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.speed import native_cpu_bf16
from benchmarks.bench_train import compose_config, describe, pipeline_settings

OVERRIDES = (
    "experiment=quickstart",
    "category=brick",
    "logger=csv",
    "visualization.max_overlays=0",
    "validation.figure_samples=0",
)
SPEED_OFF = ("trainer.channels_last=false", "trainer.cpu_bf16=false")
BF16_ON = ("trainer.cpu_bf16=true",)
LOSS_TARGET, OBJECTIVE_TARGET = 1.10, -0.02


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_label() -> str:
    """``AMD EPYC, native bf16 (avx512_bf16/amx_bf16)``: which CPU a quality row ran on."""
    return f"{cpu_model()}, {'native' if native_cpu_bf16() else 'no native'} bf16 (avx512_bf16/amx_bf16)"


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


def compare(on: dict, off: dict, label: str, where: str) -> list[dict]:
    """The loss row and the validation-objective row of job ``on`` against the speed-off job ``off``."""
    loss_ratio = on["val_loss"] / off["val_loss"]
    drop = on["validation"] - off["validation"]
    return [
        {
            "benchmark": f"best validation loss, {label} ({on['settings']}), {where}",
            "ours": on["val_loss"],
            "unit": "",
            "reference": f"speed options off ({off['settings']})",
            "reference_value": off["val_loss"],
            "ratio": loss_ratio,
            "target": f"<= {LOSS_TARGET:.2f}",
            "passed": loss_ratio <= LOSS_TARGET,
        },
        {
            "benchmark": (
                f"selected map's validation {on['objective']}, {label} ({on['selected_map']}) vs off "
                f"({off['selected_map']}), {where}"
            ),
            "ours": on["validation"],
            "unit": "",
            "reference": "speed options off",
            "reference_value": off["validation"],
            "ratio": on["validation"] / off["validation"],
            "target": f"on - off >= {OBJECTIVE_TARGET}",
            "passed": drop >= OBJECTIVE_TARGET,
        },
    ]


def not_measured(label: str, where: str) -> list[dict]:
    """The two rows of ``compare`` without values (``run_all.markdown_table`` shows "not measured")."""
    why = "not measured: no native bf16 on this CPU (emulated bf16 is several times slower)"
    return [
        {
            "benchmark": f"{name}, {label}, {where}: {why}",
            "ours": math.nan,
            "unit": "",
            "reference": "speed options off",
            "reference_value": math.nan,
            "ratio": math.nan,
            "target": target,
            "passed": None,
        }
        for name, target in (
            ("best validation loss", f"<= {LOSS_TARGET:.2f}"),
            ("selected map's validation objective", f"on - off >= {OBJECTIVE_TARGET}"),
        )
    ]


def run(max_epochs: int = 8, extra: tuple[str, ...] = ()) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``: the speed
    options as shipped, then bf16 asked for (on a CPU with native bf16 only), each against the job with
    both off. ``extra`` overrides (e.g. a smaller training set) apply to every job."""
    base = [*OVERRIDES, f"trainer.max_epochs={max_epochs}", *extra]
    where = f"textures/brick, quickstart, {max_epochs} epochs, on {cpu_label()}"
    off = quality([*base, *SPEED_OFF])
    rows = compare(quality(base), off, "speed options as shipped", where)
    bf16_label = "bf16 asked for (`trainer.cpu_bf16=true`)"
    if native_cpu_bf16():
        return rows + compare(quality([*base, *BF16_ON]), off, bf16_label, where)
    return rows + not_measured(bf16_label, where)


if __name__ == "__main__":
    from benchmarks.run_all import markdown_table

    print(markdown_table(run()))
