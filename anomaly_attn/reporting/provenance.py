"""The footnote under every table: how its numbers were computed and by which code, read from the runs.

Metric definitions (AUPRO's FPR limit, the map resolution, exact or bounded pixel metrics), the bootstrap
of the intervals (resamples, level, seed) and the package version and commit, each as the set of values
the table's complete runs hold, so a table mixing settings or code says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from anomaly_attn.reporting.runs import Run

# AnomalyPixelMetrics keeps a map kind's test pixels exactly up to this many (metrics/streaming.py).
EXACT_PIXELS = 2**24


def _values(runs: Iterable[Run], key: str) -> list[str]:
    found = {str(value) for run in runs if (value := run.value(key)) is not None}
    return sorted(found)


def _joined(values: list[str], missing: str = "not recorded") -> str:
    return " / ".join(values) if values else missing


def _exactness(runs: list[Run]) -> str:
    """Whether each run's pixel metrics were exact (test pixels within EXACT_PIXELS) or bounded."""
    bounded = 0
    for run in runs:
        size, n_test = run.value("dataset.image_size"), run.value("n_test")
        if isinstance(size, int) and isinstance(n_test, int) and n_test * size * size > EXACT_PIXELS:
            bounded += 1
    if not bounded:
        return "exact (sort-based)"
    return (f"exact, except {bounded} run(s) over 2^24 test pixels: bounded (each run warns where its "
            "error bound exceeds 1e-4)")


def provenance_footnote(runs: list[Run]) -> str:
    """One paragraph: metric definitions, the intervals' bootstrap, version and commit of the runs."""
    complete = [run for run in runs if run.status == "complete"]
    commits = sorted({str(c)[:10] + ("+dirty" if run.value("provenance.git_dirty") else "")
                      for run in complete if (c := run.value("provenance.git_commit"))})
    resamples = _values(complete, "intervals.resamples")
    level, seed = _joined(_values(complete, "intervals.level")), _joined(_values(complete, "intervals.seed"))
    bootstrap = (
        f"stratified bootstrap over test images, B = {_joined(resamples)}, level {level}, seed {seed}"
        if resamples else "none recorded"
    )
    pixels = (
        f"pixel metrics {_exactness(complete)} on maps at "
        f"{_joined(_values(complete, 'dataset.image_size'))} px; AUPRO up to FPR "
        f"{_joined(_values(complete, 'evaluation.fpr_limit'))}, normalised by it"
    )
    if complete and all(run.value("pixel_auroc") is None for run in complete):
        pixels = "no pixel metrics (test images without masks: image metrics only)"
    return (
        f"Provenance: {pixels}; intervals: {bootstrap}; "
        f"anomaly_attn {_joined(_values(complete, 'provenance.version'))}, commit {_joined(commits)}; "
        f"{len(complete)} complete run(s)."
    )
