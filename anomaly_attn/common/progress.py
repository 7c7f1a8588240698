"""Progress of the steps between Lightning's own bars (map selection, calibration, post-hoc scoring), shown
with rich, the library Lightning's progress bar is built on; ``ANOMALY_ATTN_PROGRESS=0`` turns every bar
off, Lightning's included (``training/trainer.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PROGRESS_ENV = "ANOMALY_ATTN_PROGRESS"


def progress_enabled() -> bool:
    return bool(int(os.environ.get(PROGRESS_ENV, "1")))


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar of ``total`` steps; yields ``advance(steps=1)``. On a terminal the bar is redrawn in place;
    elsewhere (a log file, CI) rich prints it once, when the step ends."""
    if not progress_enabled() or total <= 0:
        yield lambda steps=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda steps=1: bar.advance(task, steps)
