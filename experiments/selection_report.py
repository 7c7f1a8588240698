"""The command line shared by the study scripts: read a sweep's runs, render Markdown, write it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from anomaly_attn.reporting.runs import Run, find_runs


def run_report_cli(
    argv: list[str] | None, description: str, name: str, render: Callable[[list[Run]], str]
) -> int:
    """``SCRIPT ROOT``: write ``ROOT/report/<name>.md`` from the runs below ROOT that carry a
    ``selection`` block (exit 2, saying which preset to run, when there are none)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, help="the preset's sweep directory")
    args = parser.parse_args(argv)
    runs = find_runs(args.root) if args.root.exists() else []
    if not any(isinstance(run.value("selection"), dict) for run in runs):
        print(
            f"error: no run with a selection block under {args.root}; run the sweeps first "
            f"(make paper-{name})",
            file=sys.stderr,
        )
        return 2
    out = args.root / "report" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = render(runs)
    out.write_text(text)
    print(text)
    print(f"Written to {out}")
    return 0
