"""Post-hoc test scoring (``selection.posthoc_test=true``): time and peak memory of real ``evaluate`` jobs,
with a small and a larger candidate grid, on generated ``dataset=folder`` categories.

    python -m benchmarks.bench_posthoc                          # prints the rows
    python -m benchmarks.bench_posthoc --pythonpath OTHER_TREE  # the same jobs with another checkout's
                                                                # package (before/after comparisons)

Each set is generated in a temporary folder in the MVTec layout (``bench_cache.make_category``: RGB PNGs,
smooth texture plus noise, rectangular defects with masks): 579 test images of 128² (200 good, 379
defective; 200 training images) and 100 of 256² (40 good, 60 defective; 100 training images). conv_ae is
trained for one epoch on the training images (``python -m anomaly_attn.train``, on a copy of the category
with 4 test images, so that the training job's own test pass is short); then ``python -m
anomaly_attn.evaluate ckpt_path=... selection.posthoc_test=true`` runs in a child process once per grid,
selecting on synthetic validation data (``validation=mixed``), testing, and scoring every candidate on
the test images. Measured per child: wall time, peak resident memory (``os.wait4``'s ``ru_maxrss`` of that
child alone) and, from its metrics.json, ``selection.posthoc_seconds`` and the candidate counts.

The grids are limited so that the benchmark stays short (the default grid is every spatial layer × 4
variants × 2 inputs with 5 σ and 3 fusions): small, 1 layer × 1 variant × 2 inputs; large, 4 layers × 2
variants × 2 inputs; both with the 3 controls, σ ∈ {0, 2}, fusion none/product, ``stage2_width=1``.
The memory row asks that the larger grid's job peak no higher than the small grid's (ratio ≤ 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_cache import CATEGORY, make_category

REPO = Path(__file__).resolve().parent.parent
# (image side, training images, good test images, defective test images)
SETS = ((128, 200, 200, 379), (256, 100, 40, 60))
GRIDS = {
    "small": (["encoder.16"], ["mean_abs_cam"]),
    "large": (["encoder.10", "encoder.13", "encoder.16", "encoder.19"], ["mean_abs_cam", "layercam"]),
}
QUIET = ["dataset.num_workers=0", "logger=none", "visualization.max_overlays=0", "intervals.resamples=0",
         "faithfulness.images=0"]
GRID_KEYS = ["selection.inputs=[residual,image]", "selection.smoothing_sigmas=[0,2]",
             "selection.fusions=[none,product]", "selection.stage2_width=1"]


def child_env(pythonpath: Path, cache_dir: Path) -> dict[str, str]:
    """This environment with ``pythonpath``'s package first, no progress bars, offline W&B and a
    decoded-image cache of the benchmark's own."""
    hidden = ("HYDRA_FULL_ERROR", "ANOMALY_ATTN_DEBUG")
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env.update(PYTHONPATH=str(pythonpath), ANOMALY_ATTN_PROGRESS="0", WANDB_MODE="offline",
               WANDB_SILENT="true", ANOMALY_ATTN_CACHE_DIR=str(cache_dir))
    return env


def run_child(module: str, overrides: list[str], env: dict[str, str], work: Path) -> tuple[float, float]:
    """``python -m MODULE OVERRIDES`` in ``work`` (not the repository, so that ``env``'s PYTHONPATH decides
    which package runs): (wall seconds, the child's peak RSS in MiB). Fails with the log's tail."""
    log = work / f"{module.rsplit('.', 1)[-1]}_{time.monotonic_ns()}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        command = [sys.executable, "-m", module, *overrides]
        process = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{module} failed ({process.returncode}):\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024.0  # KiB on Linux


def training_copy(root: Path, target: Path, test_images: int = 2) -> Path:
    """``root``'s category with all its training images and ``test_images`` good and defective test
    images (with masks): the model trains on the same images, and its job tests only these."""
    source, copy = root / CATEGORY, target / CATEGORY
    shutil.copytree(source / "train", copy / "train")
    for kind in ("good", "defect"):
        for path in sorted((source / "test" / kind).iterdir())[:test_images]:
            (copy / "test" / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copy / "test" / kind / path.name)
            mask = source / "ground_truth" / kind / f"{path.stem}_mask.png"
            if mask.exists():
                (copy / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                shutil.copy(mask, copy / "ground_truth" / kind / mask.name)
    return target


def grid_facts(metrics: dict) -> tuple[int, int, float]:
    """(candidates, distinct base maps among them, post-hoc seconds or nan) of a metrics.json."""
    candidates = metrics["selection"]["candidates"]
    bases = {(c["spec"]["source"], c["spec"].get("layer"), c["spec"].get("variant"), c["spec"].get("input"))
             for c in candidates}
    return len(candidates), len(bases), float(metrics["selection"].get("posthoc_seconds", float("nan")))


def measure_set(side: int, n_train: int, n_good: int, n_defect: int, env: dict[str, str], work: Path) -> dict:
    """Generate the set, train once, evaluate with post-hoc scoring once per grid: per grid its facts."""
    root = make_category(work / f"data{side}", side, n_train, n_good, n_defect)
    train_root = training_copy(root, work / f"train_data{side}")
    run = work / f"train{side}"
    data = ["dataset=folder", f"category={CATEGORY}", f"dataset.image_size={side}"]
    run_child("anomaly_attn.train", [*data, f"dataset.root={train_root}", "trainer.max_epochs=1",
                                     "validation=none", "selection.map=fixed", *QUIET,
                                     f"hydra.run.dir={run}"], env, work)
    results = {}
    for name, (layers, variants) in GRIDS.items():
        out = work / f"evaluate{side}_{name}"
        overrides = [f"ckpt_path={run}/checkpoints/model.ckpt", *data, f"dataset.root={root}",
                     "selection.map=auto", "validation=mixed", "selection.posthoc_test=true",
                     f"selection.layers=[{','.join(layers)}]", f"selection.variants=[{','.join(variants)}]",
                     *GRID_KEYS, *QUIET, f"hydra.run.dir={out}"]
        seconds, peak = run_child("anomaly_attn.evaluate", overrides, env, work)
        metrics = json.loads((out / "metrics.json").read_text())
        candidates, bases, posthoc = grid_facts(metrics)
        results[name] = {"seconds": seconds, "peak_mib": peak, "candidates": candidates, "bases": bases,
                         "posthoc_s": posthoc, "n_test": int(metrics["n_test"])}
    return results


def set_rows(side: int, results: dict, package: str) -> list[dict]:
    """A time row per grid (documented) and the memory row (large grid against small)."""
    small, large = results["small"], results["large"]
    what = f"{large['n_test']} test images of {side}²"
    rows = []
    for name, facts in results.items():
        rows.append({
            "benchmark": f"post-hoc test scoring (evaluate selection.posthoc_test=true{package}), {what}, "
            f"{name} grid: {facts['candidates']} candidates on {facts['bases']} base maps; peak RSS "
            f"{facts['peak_mib']:.0f} MiB",
            "ours": facts["posthoc_s"],
            "unit": "s",
            "reference": "the whole evaluate job (wall, the same child)",
            "reference_value": facts["seconds"],
            "ratio": facts["posthoc_s"] / facts["seconds"],
            "target": "documented",
            "passed": None,
        })
    ratio = large["peak_mib"] / small["peak_mib"]
    rows.append({
        "benchmark": f"peak RSS of evaluate selection.posthoc_test=true{package}, {what}: large grid "
        f"({large['candidates']} candidates, {large['bases']} bases) against small ({small['candidates']}, "
        f"{small['bases']})",
        "ours": large["peak_mib"],
        "unit": "MiB",
        "reference": "the same job with the small grid",
        "reference_value": small["peak_mib"],
        "ratio": ratio,
        "target": "<= 1.1",
        "passed": ratio <= 1.1,
    })
    return rows


def run(pythonpath: Path = REPO, sets: tuple[tuple[int, int, int, int], ...] = SETS) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}`` per set: the
    post-hoc seconds of each grid against the whole job (documented) and the larger grid's peak RSS
    against the small grid's (target ≤ 1.1: memory does not grow with the number of candidates)."""
    package = "" if Path(pythonpath).resolve() == REPO else f", package from {pythonpath}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_posthoc_") as folder:
        work = Path(folder)
        env = child_env(Path(pythonpath), work / "cache")
        for side, n_train, n_good, n_defect in sets:
            rows += set_rows(side, measure_set(side, n_train, n_good, n_defect, env, work), package)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", type=Path, default=REPO,
                        help="the folder holding the anomaly_attn package to run (default: this checkout)")
    parser.add_argument("--sides", type=int, nargs="*", default=[side for side, *_ in SETS])
    args = parser.parse_args(argv)
    for row in run(args.pythonpath, tuple(s for s in SETS if s[0] in args.sides)):
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
