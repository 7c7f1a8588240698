"""The real-data table of ELPV: per category and seed, the image AUROC of the selected image score, the same
model's residual and controls, and every classical detector, each with its 95 % bootstrap interval.

    python experiments/elpv_table.py outputs/elpv_study/multirun [--classical DIR]   # after the sweeps
    make elpv                                                  # the sweeps + report + this

Reads the complete ELPV training runs below the directory and the classical-detector runs below
``--classical`` (default: ``<dir>/../classical``, where ``experiments/paper.py`` puts the preset's
``classical:`` sweep) and writes ``<dir>/report/elpv_table.md``. Intervals: the stratified bootstrap
over test images that every run writes (training runs: ``intervals.maps.<map>.image_auroc``; classical
runs: ``intervals.maps.score.image_auroc``); a cell without one shows the AUROC alone. ELPV has no pixel
masks: no pixel metric exists to report (none is computed, so none can be NaN). Below the table: how each
image-score rule (``selection.image_score_confirm``) transferred to a held-out generator of the
validation set (``anomaly_attn.reporting.transfer_table``; validation data only).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from anomaly_attn.reporting.runs import Run, find_runs
from anomaly_attn.reporting.transfer_table import transfer_markdown

DETECTOR_ORDER = ("knn", "ocsvm", "iforest", "lof", "kmeans")
"""conf/detector/'s detectors in the README's order; others follow by name."""
CONTROL_ORDER = ("residual_l2", "residual_ssim", "residual_highpass", "image_highpass")


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def cell(run: Run | None, auroc_key: str, interval_key: str) -> str:
    """``0.873 [0.838, 0.904]``, the AUROC alone without an interval, ``–`` without the run or value."""
    if run is None:
        return "–"
    value = run.value(auroc_key)
    block = run.value(interval_key)
    if isinstance(block, dict) and "low" in block and _fmt(value) != "–":
        return f"{_fmt(value)} [{_fmt(block['low'])}, {_fmt(block['high'])}]"
    return _fmt(value)


def _ordered(names: set[str], order: tuple[str, ...]) -> list[str]:
    return [name for name in order if name in names] + sorted(names - set(order))


def _detector(run: Run) -> str:
    """``knn`` of a classical run's ``model: classical:knn``."""
    return str(run.value("model")).removeprefix("classical:")


def _key(run: Run) -> tuple[str, str]:
    return str(run.value("category")), str(run.value("seed"))


def real_data_markdown(trained: list[Run], classical: list[Run]) -> str:
    """The table (rows: category and seed; columns: selected image score, controls, detectors)."""
    trained = [r for r in trained if r.status == "complete" and r.value("dataset") == "elpv"]
    classical = [r for r in classical if r.status == "complete" and r.value("dataset") == "elpv"]
    controls = _ordered({name for r in trained for name in (r.value("controls") or {})}, CONTROL_ORDER)
    detectors = _ordered({_detector(r) for r in classical}, DETECTOR_ORDER)
    by_key: dict[tuple[str, str], dict[str, Run]] = {}
    for run in trained:
        by_key.setdefault(_key(run), {})["trained"] = run
    for run in classical:
        by_key.setdefault(_key(run), {})[_detector(run)] = run
    header = ["category", "seed", "selected image score", "AUROC", *controls, *detectors]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (category, seed), runs in sorted(by_key.items()):
        model = runs.get("trained")
        cells = [category, seed, str(model.value("image_score")) if model else "–",
                 cell(model, "image_auroc", "intervals.maps.selected.image_auroc")]
        cells += [cell(model, f"controls.{name}.image_auroc", f"intervals.maps.{name}.image_auroc")
                  for name in controls]
        cells += [cell(runs.get(name), "image_auroc", "intervals.maps.score.image_auroc")
                  for name in detectors]
        lines.append("| " + " | ".join(cells) + " |")
    models = sorted({str(r.value("model")) for r in trained})
    epochs = sorted({str(r.value("epochs")) for r in trained})
    lines += [
        "",
        f"Image AUROC on ELPV's test cells (probability-1 cells against held-out probability-0 ones) with "
        f"the 95 % stratified bootstrap interval over the test images. Training runs: {', '.join(models)} "
        f"(epochs: {', '.join(epochs)}); the selected image score was chosen on synthetic validation "
        f"anomalies, the controls are the same model's maps (image_highpass: no model). Classical "
        f"detectors: conf/detector/ on {', '.join(detectors) or 'no run'}. ELPV has no pixel masks: "
        f"image metrics only.",
    ]
    transfer = transfer_markdown(trained, lambda run: str(run.value("category")))
    if transfer:
        lines += ["", "### Image-score rules on a held-out kind of synthetic defect\n", *transfer]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="the elpv_study sweep directory")
    parser.add_argument("--classical", type=Path, default=None,
                        help="the classical-detector sweep directory (default: ROOT/../classical)")
    args = parser.parse_args(argv)
    classical_dir = args.classical or args.root.parent / "classical"
    trained = find_runs(args.root) if args.root.exists() else []
    classical = find_runs(classical_dir) if classical_dir.exists() else []
    if not any(r.status == "complete" and r.value("dataset") == "elpv" for r in trained + classical):
        print(f"error: no complete ELPV run under {args.root} or {classical_dir}; run the sweeps first "
              "(make elpv)", file=sys.stderr)
        return 2
    out = args.root / "report" / "elpv_table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = real_data_markdown(trained, classical)
    out.write_text(text)
    print(text)
    print(f"Written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
