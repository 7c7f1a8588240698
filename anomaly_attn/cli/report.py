"""Tables and figures from a sweep (or any outputs) directory.

    python -m anomaly_attn.report SWEEP_DIR [--rows category] [--cols layer] [--metric pixel_auroc] [--wandb]

Writes SWEEP_DIR/report/:

- ``summary.md``: one row per run, attention next to the residual and the non-gradient controls;
  failed or incomplete runs are listed, never silently dropped;
- ``table.{md,tex,csv}``: ``--metric`` pivoted over ``--rows`` × ``--cols`` (3 decimals, a mean row).
  Seeds are a dimension of their own: runs of one cell whose configs differ only in the top-level
  ``seed`` (paths, hydra and other ``RUN_ONLY_KEYS`` left out; ``dataset.seed`` is a data setting and
  counts) are aggregated to ``0.912 ± 0.011 (n=3)`` (mean ± sample std over seeds), a legend line under
  the table names the seeds, and the mean row averages the per-cell means; ``table.csv`` is then one line
  per cell (row, column, mean, std, n, seeds, per-seed values). Runs of one cell that differ in any
  other key are refused, naming the key and both values. ``--cols seed`` (or ``--rows seed``) shows
  one run per cell as before. Failed and unfinished runs are never averaged in;
- ``summary.md`` and ``selection.md`` keep one row per run, with a ``seed`` column when runs hold several
  seeds. Figures show one run per cell: with seeds aggregated, the one with the lowest seed (their
  titles say so and their labels name its seed);
- ``qualitative_<col>.png``: per value of ``--cols``, one column per ``--rows`` value: a defective test
  image (the run's first in defect-type order, not picked by score), titled with the run's selected
  map, above that map's overlay. A ``layer`` that selection left empty (the chosen map has none, e.g.
  ``residual_ssim σ2``) is named by the selected map, in labels and file names
  (``qualitative_residual_ssim_sigma2.png``);
- ``roc.png``: image-level ROC curves (false-positive rate on x), one panel per ``--rows`` value; per
  ``--cols`` value, the run's selected image score (solid, named in the legend by what it is, e.g.
  ``max of residual_ssim σ2``) and the same run's residual_l2 control map (dashed, same colour);
- ``per_defect.png``: the per-defect-type breakdown (pixel AUROC of the selected map, or image AUROC
  of the selected image score without masks) next to the residual_l2 control;
- ``faithfulness.md`` (where runs hold a ``faithfulness`` block): per checked map, its deletion and
  insertion AUCs, the paired differences with a random map and residual_l2 (in how many runs the interval
  excludes 0) and the model-randomization verdicts;
- ``grid.png``: the first run's own figure grid;
- ``index.html``: all of the above on one self-contained page (figures inlined, no network, no
  script), failed and unfinished runs marked, with relative links to every run directory.

With ``--compare A B`` (``loss.name=mse loss.name=ssim``, ``layer=encoder.14 layer=encoder.21``, or two maps
of each run: ``selected residual_l2``), only ``compare.md`` (printed too): per metric, per category the mean
over seeds of A, of B and of A − B with its bootstrap interval over test images (runs paired by category
and seed on the same test images, ``reporting.compare``), and a Wilcoxon test across categories.

With ``--where KEY=VALUE`` (repeatable), only the runs with that value take part, e.g.
``--where dataset.corruption=white`` for one of the attention study's two Fashion-MNIST test sets; the
files then go to ``report/KEY=VALUE/`` (joined by ``,`` for several) so that reports of different subsets
do not overwrite each other.

With ``--wandb``, one W&B run (job_type ``report``, group = the runs' experiment) logs the per-run
results as a ``wandb.Table`` and the figures (offline unless ``WANDB_MODE=online``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from anomaly_attn.reporting.compare import write_comparison
from anomaly_attn.reporting.runs import Run, find_runs, select_runs
from anomaly_attn.reporting.sweep_report import ID_FIELDS, build_report
from anomaly_attn.reporting.tables import SUMMARY_COLUMNS

log = logging.getLogger(__name__)

def log_report_to_wandb(
    root: Path, out_dir: Path, rows: str, cols: str, metric: str, runs: list[Run] | None = None
) -> str:
    """One W&B run of job_type ``report`` with the per-run results table and the report figures
    (``runs``: the runs below ``root`` when already read). Returns the run's local directory."""
    import wandb

    runs = [r for r in (find_runs(root) if runs is None else runs) if r.status == "complete"]
    experiments = sorted({str(r.value("experiment")) for r in runs})
    metric_keys = [metric, *[key for _, key in SUMMARY_COLUMNS if key != metric]]
    results = wandb.Table(columns=[*ID_FIELDS, *metric_keys, "run_dir"])
    for run in runs:
        values = [run.value(key) for key in metric_keys]
        results.add_data(
            *[str(run.value(f)) for f in ID_FIELDS],
            *[float(v) if isinstance(v, (int, float)) else math.nan for v in values],
            str(run.path),
        )
    os.environ.setdefault("WANDB_SILENT", "true")
    wandb_run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "anomaly_attn"),
        entity=os.environ.get("WANDB_ENTITY"),
        mode=os.environ.get("WANDB_MODE", "offline"),
        group=experiments[0] if len(experiments) == 1 else None,
        job_type="report",
        name=f"report-{'+'.join(experiments) or root.name}",
        dir=str(out_dir),
        config={"root": str(root), "rows": rows, "cols": cols, "metric": metric, "experiments": experiments},
    )
    try:
        payload: dict[str, Any] = {"report/results": results}
        for figure in sorted(out_dir.glob("*.png")):
            payload[f"report/{figure.stem}"] = wandb.Image(str(figure))
        wandb_run.log(payload)
        wandb_run.summary["n_runs"] = len(runs)
        return str(wandb_run.dir)
    finally:
        wandb_run.finish()


def default_metric(runs: list) -> str:
    """``pixel_auroc``, or ``image_auroc`` (saying so) when runs finished and none has pixel metrics: their
    test sets had no masks (ELPV, a folder without ground truth), so a pixel table would be empty."""
    complete = [run for run in runs if run.status == "complete"]
    if complete and all(run.value("pixel_auroc") is None for run in complete):
        print("note: no run has pixel metrics (test sets without masks): the table shows image_auroc")
        return "image_auroc"
    return "pixel_auroc"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="sweep or outputs directory")
    parser.add_argument("--rows", default="category")
    parser.add_argument("--cols", default="layer")
    parser.add_argument(
        "--metric",
        default=None,
        help="metrics.json key, dotted for nested ones (controls.residual_l2.pixel_auroc); default "
             "pixel_auroc, or image_auroc where no run has pixel metrics (a test set without masks: ELPV)",
    )
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    parser.add_argument(
        "--where", action="append", default=[], metavar="KEY=VALUE",
        help="only runs with this value (repeatable), e.g. dataset.corruption=white; "
             "files go to report/KEY=VALUE/",
    )
    parser.add_argument("--wandb", action="store_true", help="log the results table and figures to W&B")
    parser.add_argument(
        "--compare", nargs=2, metavar=("A", "B"),
        help="write only report/compare.md: A − B per category with bootstrap intervals; A and B are "
             "KEY=VALUE (loss.name=mse loss.name=ssim) or two maps of each run (selected residual_l2)",
    )
    args = parser.parse_args(argv)
    if not args.root.exists():
        print(f"error: {args.root} does not exist", file=sys.stderr)
        return 2
    runs = find_runs(args.root)  # read once: the report, the W&B upload and the exit status use them
    try:
        runs = select_runs(runs, args.where)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out_dir = args.root / "report" / ",".join(args.where) if args.where else None
    if args.metric is None:
        args.metric = default_metric(runs)
    if args.compare:  # the comparison alone: its runs differ in the compared key, which tables refuse
        try:
            print(write_comparison(args.root, runs, *args.compare, out_dir=out_dir).read_text())
        except ValueError as error:
            print(f"error: --compare: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        out_dir = build_report(
            args.root, args.rows, args.cols, args.metric, out_dir=out_dir, figures=not args.no_figures,
            runs=runs,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out_dir / "summary.md").read_text())
    print("Selected maps (chosen on synthetic validation data), validation and test side by side:")
    print((out_dir / "selection.md").read_text())
    print((out_dir / "table.md").read_text())
    if args.wandb:
        wandb_dir = log_report_to_wandb(args.root, out_dir, args.rows, args.cols, args.metric, runs=runs)
        print(f"W&B report run: {wandb_dir}")
    print(f"Report written to {out_dir}")
    unfinished = [r for r in runs if r.status != "complete"]
    if unfinished:
        print(f"error: {len(unfinished)} run(s) failed or never finished (listed in summary.md above); "
              "re-run the sweep to complete them.", file=sys.stderr)
    return 1 if unfinished else 0


if __name__ == "__main__":
    raise SystemExit(main())
