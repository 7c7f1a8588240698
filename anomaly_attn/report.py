"""Tables and figures from a sweep (or any outputs) directory.

    python -m anomaly_attn.report SWEEP_DIR [--rows category] [--cols layer] [--metric pixel_auroc]

Writes SWEEP_DIR/report/{summary.md, table.md, table.tex, table.csv, grid.png} and prints the
summary (attention next to the residual and the non-gradient controls). Failed or incomplete runs
are listed, never silently dropped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from anomaly_attn.reporting.runs import find_runs
from anomaly_attn.reporting.tables import pivot, summary_markdown, to_csv, to_latex, to_markdown


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_report(
    root: Path,
    rows: str = "category",
    cols: str = "layer",
    metric: str = "pixel_auroc",
    out_dir: Path | None = None,
) -> Path:
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"No run directories (config.yaml / metrics.json) under {root}.")
    out_dir = out_dir or root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "summary.md", summary_markdown(runs))
    table = pivot(runs, rows, cols, metric)
    _write_atomic(out_dir / "table.md", to_markdown(table))
    _write_atomic(out_dir / "table.tex", to_latex(table))
    _write_atomic(out_dir / "table.csv", to_csv(table))
    grids = [r.path / "figures" / "grid.png" for r in runs if (r.path / "figures" / "grid.png").exists()]
    if grids:
        shutil.copyfile(grids[0], out_dir / "grid.png")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="sweep or outputs directory")
    parser.add_argument("--rows", default="category")
    parser.add_argument("--cols", default="layer")
    parser.add_argument(
        "--metric",
        default="pixel_auroc",
        help="metrics.json key, dotted for nested ones (baselines.residual_l2.pixel_auroc)",
    )
    args = parser.parse_args(argv)
    if not args.root.exists():
        print(f"error: {args.root} does not exist", file=sys.stderr)
        return 2
    try:
        out_dir = build_report(args.root, args.rows, args.cols, args.metric)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((out_dir / "summary.md").read_text())
    print((out_dir / "table.md").read_text())
    print(f"Report written to {out_dir}")
    failed = [r for r in find_runs(args.root) if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
