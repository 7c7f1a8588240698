"""Run every benchmark and rewrite ``BENCHMARKS.md`` (``make bench``).

    python -m benchmarks.run_all                    # full sizes, writes BENCHMARKS.md (~20 min on 2 cores)
    python -m benchmarks.run_all --output FILE.md   # elsewhere
    python -m benchmarks.run_all --only feature-memory   # re-run one benchmark, replace its rows in place

Each figure is measured against its bare reference in the same process, and reported as a ratio, so
that the table says how close the project is to what the machine allows rather than how fast the
machine is.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_attn.training.speed import native_cpu_bf16
from benchmarks import (
    bench_cache,
    bench_faithfulness,
    bench_feature_memory,
    bench_intervals,
    bench_layers,
    bench_library,
    bench_metrics,
    bench_posthoc,
    bench_quality,
    bench_test_step,
    bench_train,
)

REPO = Path(__file__).resolve().parent.parent
COMMAND = "make bench  # = .venv/bin/python -m benchmarks.run_all"


def machine_description(load_before: tuple[float, float, float]) -> list[str]:
    """Markdown bullet lines: CPU, cores, threads, library versions and the load around the run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_after = os.getloadavg()
    return [
        f"- CPU: {bench_quality.cpu_model()}, {cores} cores available to the process, "
        f"{'native' if native_cpu_bf16() else 'no native'} bf16 (avx512_bf16/amx_bf16). Training is "
        "float32 by default on every CPU (`trainer.cpu_bf16=false`); the bf16 quality rows "
        f"(`trainer.cpu_bf16=true`) are {'measured' if native_cpu_bf16() else 'not measured'} here.",
        gpu_line(),
        f"- torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- load average (1 min) {load_before[0]:.2f} before and {load_after[0]:.2f} after the run: other "
        "processes sharing the cores slow the bare references and ours alike; every ratio is taken "
        "in one process, with best-of-N or alternated timings (see each benchmark's docstring).",
    ]


def gpu_line() -> str:
    """Whether GPU rows exist: none were measured unless a GPU is visible to this process."""
    if torch.cuda.is_available():
        return (f"- GPU: {torch.cuda.get_device_name(0)} visible, but every row above ran on the CPU "
                "(`trainer=gpu` options: bf16-mixed, cudnn.benchmark, optional torch.compile).")
    return ("- GPU: none was lent to this run (CUDA available: False), so there are no GPU rows; the "
            "`trainer=gpu` options (bf16-mixed autocast, cudnn.benchmark, pinned memory, optional "
            "torch.compile) were checked on the CPU only (config, flags reaching the objects).")


def _format(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if unit.startswith("s"):
        return f"{value:.4f} {unit}"
    if unit == "":  # a loss or a score: four significant digits
        return f"{value:.4g}"
    return f"{value:.2f} {unit}"


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (benchmark, ours, bare reference, ratio, target, pass/fail)."""
    lines = [
        "| benchmark | ours | reference | reference value | ratio | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = {True: "pass", False: "FAIL", None: "-"}[row["passed"]]
        if isinstance(row["ours"], float) and math.isnan(row["ours"]):
            result = "not measured"  # e.g. the bf16 quality rows on a CPU without native bf16
        ratio = "" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}"
        lines.append(
            f"| {row['benchmark']} | {_format(row['ours'], row['unit'])} | {row['reference']} | "
            f"{_format(row['reference_value'], row['unit'])} | {ratio} | {row['target']} | {result} |"
        )
    return "\n".join(lines)


def render(rows: list[dict], machine: list[str], elapsed_s: float, command: str = COMMAND) -> str:
    """The whole BENCHMARKS.md text."""
    today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"Written by `{command}` on {today} in {elapsed_s:.0f} s; do not edit by hand.",
            "",
            "Ratios: time rows are ours / reference (lower is better); images/s rows are ours / reference",
            "(higher is better); memory is ours / the size of the maps.",
            "",
            markdown_table(rows),
            "",
            "## Machine",
            "",
            *machine,
            "",
            "## What is measured",
            "",
            "- Metrics (`benchmarks/bench_metrics.py`): smooth random maps with planted elliptical defects; "
            "CPU time; a row against `np.sort` (or f1_max 1-D against N×H×W) times the two alternately, "
            "after one untimed call of each, and reports the median of 9 rounds of each: the same sort "
            "takes ~70 ms in a fresh process and 100-160 ms once large arrays have been freed and reused, "
            "so both sides are timed in the same heap state (the 1024² rows: one run each). Nothing is "
            "cached between calls, each pays its full cost. The array functions are exact, the "
            "streaming Metric exact up to `exact_pixels` and within its reported "
            "`error_bound` beyond (`tests/unit/test_metrics.py`). Peak memory: tracemalloc peak (numpy "
            "allocations, which hold the Metric's states too) of the call, the maps themselves excluded.",
            "- Bootstrap intervals (`benchmarks/bench_intervals.py`): a generated category of 100 maps of "
            "256² (30 defect images with blob masks); `PixelParts.from_maps` + stratified weights + image "
            "AUROC, image F1-max and pixel AUROC intervals (B = 1000) in one timed call against one "
            "`np.sort` of the same scores, and the AUPRO / pixel F1-max intervals from a built "
            "`PixelParts`; CPU time, median of alternated rounds. The last two rows: the unit-weight grid "
            "AUPRO / F1-max against the exact `functional` values, with the bound `PixelParts` records.",
            "- Training (`benchmarks/bench_train.py`): `timing.train_images_per_s` of `metrics.json` from a "
            "real `train_job` on the embedded textures (1 channel) against a bare Adam loop over "
            "`create_model('conv_ae')` with the same channels, batch, image size and loss on a batch "
            "already in memory; both time every step, the first included. The attention-loss rows are "
            "the same job with `map.weight=1` (loss `mean`, variant `seed`) at each schedule. "
            "The bare loop uses the pipeline's speed settings (`trainer.channels_last`, bf16 autocast where "
            "`trainer.cpu_bf16` turns it on); the `bare loop, ...` rows compare those settings on the bare "
            "loop alone. The 256² rows train conv_ae on the embedded textures at 3 channels (the gray level "
            "replicated) and compare with the research code's 10.5-13 images/s (its faster end) measured "
            "by the author of issue 14 on this kind of 2-core CPU.",
            "- Quality with the speed options (`benchmarks/bench_quality.py`): the same seeded training job "
            "(`experiment=quickstart category=brick`, 8 epochs) with `trainer.channels_last`/`cpu_bf16` as "
            "shipped (channels_last, float32), with bf16 autocast asked for (`trainer.cpu_bf16=true`; "
            "measured only on a CPU with native bf16, each row names the CPU) and with both off; its best "
            "validation loss and the selected map's validation objective (synthetic anomalies; test data "
            "is not looked at). One run each, so the rows move with floating-point order, which is what "
            "the targets allow for.",
            "- Grad-CAM maps at 256² (`benchmarks/bench_test_step.py`, `run_research_comparison`): "
            "reconstruction forward + `attention_map` (`gradcam`, default layer, residual input) on one "
            "batch of 32 RGB images, best of 2, against the research code's 6.6 images/s (issue 14).",
            "- Test maps (`benchmarks/bench_test_step.py`): `compute_maps` on one batch against a bare "
            "forward + encoder forward on the residual + one backward; best of 3, alternated.",
            "- Maps at every layer (`benchmarks/bench_layers.py`): `attention_maps_all_layers` at the 27 "
            "spatial layers of an untrained conv_ae (eval mode) × 4 variants (108 maps at the input size, "
            "one forward, one backward) against `attention_map` at the default layer with `seed` (one "
            "map), on the same seeded random batch of 32; wall time, one untimed call of each, then the "
            "median of 5 alternated calls.",
            "- Library replacements (`benchmarks/bench_library.py`): a hand-written piece kept instead of a "
            "library's must be at least as fast (or have a correctness reason, written next to it).",
            "- Decoded-image cache (`benchmarks/bench_cache.py`): a generated category in the MVTec layout "
            "(36 RGB PNGs of 1024², smooth texture plus noise, 8 with masks); `AnomalyDataModule.setup()` "
            "with the cache off against the same call reading the filled cache, median of 3 alternated "
            "calls in one process; the first job's decode + write, one run; and the source images decoded "
            "(`disk_cache.STATS`) by a 10-job layer sweep (`train_job` one after another, 64² input, one "
            "epoch) starting from an empty cache, against one decode of the category.",
            "- Post-hoc test scoring (`benchmarks/bench_posthoc.py`): generated `dataset=folder` categories "
            "(579 test images of 128², 100 of 256²), conv_ae trained one epoch, then `python -m "
            "anomaly_attn.evaluate ... selection.posthoc_test=true` in a child process with a small and a "
            "larger candidate grid (limited: 1 or 4 layers, 1 or 2 variants, 2 inputs, σ ∈ {0, 2}, "
            "fusion none/product, stage2_width 1); `selection.posthoc_seconds` against the job's wall time "
            "(documented) and the child's peak RSS (`os.wait4`), larger grid against smaller (one run each).",
            "- Faithfulness checks (`benchmarks/bench_faithfulness.py`): `check_maps` with the default "
            "settings on 16 generated images of 128² (a bright disc each) for 7 maps of a conv_ae, against "
            "one "
            "`compute_maps` + `map_scores` pass over the same images (what the test step pays); wall time, "
            "median of alternated rounds (documented: the cost a run pays by default).",
            "- Feature-memory maps (`benchmarks/bench_feature_memory.py`): an untrained conv_ae at 1×128² "
            "(ELPV's size), `selection.feature_memory.layers=auto` (4 layers), 16384 patches per layer, "
            "pool 3, seeded smooth-noise images: building the memory from 441 training images against one "
            "forward pass over them (one alternated run each), the banks' bytes against their bound "
            "(patches × Σ channels × 4), and the distance maps at all 4 layers for 32 test images against "
            "the reconstruction + residual map of the same batch (median of 5 alternated calls).",
            "- Load: the attention-loss rows are single runs compared with a run made minutes earlier, so "
            "they move by tens of percent when other processes share the cores; the training and test-map "
            "ratios are interleaved (bare before and after) and are the ones to trust. With "
            "`map.schedule=last_batch` the extra step runs in a callback after `TrainingThroughput` "
            "has stopped its clock, so `train_images_per_s` leaves it out (it costs one attention step "
            "per epoch).",
            "",
        ]
    )


BENCHMARKS = (
    ("metrics", bench_metrics.run),
    ("metrics at 1024²", bench_metrics.run_native_resolution),
    ("bootstrap intervals", bench_intervals.run),
    ("training", bench_train.run),
    ("training at 256², 3 channels", bench_train.run_research_comparison),
    ("quality with and without the speed options", bench_quality.run),
    ("test maps", bench_test_step.run),
    ("Grad-CAM maps at 256², 3 channels", bench_test_step.run_research_comparison),
    ("maps at every layer", bench_layers.run),
    ("library replacements", bench_library.run),
    ("decoded-image cache", bench_cache.run),
    ("post-hoc test scoring", bench_posthoc.run),
    ("faithfulness checks", bench_faithfulness.run),
    ("feature-memory", bench_feature_memory.run),
)


def replace_rows(text: str, rows: list[dict], note: str) -> str:
    """``text`` (a BENCHMARKS.md) with the table lines of ``rows`` replaced (same benchmark name) or
    appended to the table, ``note`` added under the "Written by" line (an older note on the same
    benchmarks replaced), and the "What is measured" section rendered afresh."""
    lines = text.split("\n")
    rendered = markdown_table(rows).split("\n")[2:]
    new = dict(zip([row["benchmark"] for row in rows], rendered, strict=True))
    table = [i for i, line in enumerate(lines) if line.startswith("| ") and "| benchmark |" not in line]
    for index in table:
        name = lines[index][2:].split(" | ", 1)[0]
        if name in new:
            lines[index] = new.pop(name)
    lines[table[-1] + 1 : table[-1] + 1] = list(new.values())
    written = next(i for i, line in enumerate(lines) if line.startswith("Written by "))
    lines = [line for line in lines if not line.startswith(note.split(":", 1)[0] + ":")]
    lines.insert(written + 1, note)
    text = "\n".join(lines)
    measured = render([], [], 0.0)
    return text[: text.index("## What is measured")] + measured[measured.index("## What is measured") :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    names = [name for name, _ in BENCHMARKS]
    parser.add_argument(
        "--only", action="append", choices=names, metavar="NAME",
        help=f"re-run only this benchmark (repeatable) and replace its rows in --output; one of: {names}",
    )
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for name, benchmark in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows += benchmark()
    if args.only:
        today = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        only = " ".join(f"--only {name}" for name in args.only)
        machine = machine_description(load_before)[0].removeprefix("- ")
        cpu = machine.split(". Training")[0]
        note = (f"Rows of {', '.join(args.only)}: re-measured by `.venv/bin/python -m benchmarks.run_all "
                f"{only}` on {today} in {time.perf_counter() - start:.0f} s ({cpu}; load average (1 min) "
                f"{load_before[0]:.2f} before and {os.getloadavg()[0]:.2f} after: other processes shared the "
                "cores when it is above the core count).")
        text = replace_rows(args.output.read_text(), rows, note)
    else:
        text = render(rows, machine_description(load_before), time.perf_counter() - start)
    args.output.write_text(text)
    print(text)
    return 0 if all(row["passed"] is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
