"""Jobs that fail alone, and sweeps that say what failed.

Hydra's ``run_job`` already catches a task's exception in every launcher (basic, joblib, submitit),
but the sweeper then re-raises the *first* failure after the batch: the other failures are only in
the logs, ``on_multirun_end`` never runs, and nothing in the run directory says why a job died. So:

- ``isolate_failure`` runs one job; on an exception it writes ``error.txt`` (message first, then the
  overrides and the traceback) into the job's run directory. In a sweep it returns a failure marker
  so the sweep goes on; in a single run it re-raises.
- ``SweepSummaryCallback`` (registered in ``conf/hydra/default.yaml``) stamps the sweep directory when
  the sweep starts and, when it ends, classifies every job directory this sweep touched (completed,
  skipped as already complete, failed, incomplete), logs the failed ones with their overrides and
  error, and writes ``sweep_summary.json``. Job directories are found on disk (``.hydra/overrides.yaml``
  newer than the stamp, both timestamps from the same file system), because with joblib and submitit
  the jobs run in other processes or on other machines.
- ``exit_code_of_last_sweep`` lets the entry point exit non-zero when a job failed.
- ``stop_with_the_sweep``: a job in a joblib (loky) worker ends when the sweep's process is gone, instead
  of training on unseen for hours after the sweep was killed (it resumes from its last checkpoint when
  the sweep is run again).

Kept free of torch/Lightning imports: the entry point imports it before any job starts.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.cli.errors import debug_requested, exit_with_error
from anomaly_attn.run.store import ERROR_FILE, METRICS_FILE

log = logging.getLogger(__name__)

# conf/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml set this project's defaults under the
# plugins' own config names; Hydra then validates them against the plugins' schemas (useful: a typo'd
# key fails) and warns on every launch that this matching is deprecated. Silence only that warning
# (this module is imported in the main process and, through the sweep callback, in every worker).
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema")

SUMMARY_FILE = "sweep_summary.json"
SWEEP_STAMP = ".sweep_started"


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``, the one-line form used in error.txt and summaries."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def record_failure(run_dir: Path, error: BaseException, overrides: list[str]) -> Path:
    """Write ``error.txt``: the error's first line (what reports show), the overrides, the traceback."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ERROR_FILE
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    path.write_text(f"{first_line(error)}\n\noverrides: {' '.join(overrides)}\n\n{trace}")
    return path


PARENT_POLL_SECONDS = 2.0
_watched: list[int] = []


def stop_with_the_sweep(poll_seconds: float = PARENT_POLL_SECONDS) -> bool:
    """In a loky worker (``hydra/launcher=joblib``), start a daemon thread that ends this process when
    its parent, the sweep, is gone (killed: loky's workers outlive a SIGTERM or SIGKILL of the sweep and
    would train on). Once per process; returns whether a watch is running."""
    if multiprocessing.current_process().name.startswith("LokyProcess") and not _watched:
        parent = os.getppid()
        _watched.append(parent)

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(poll_seconds)
            print(f"anomaly_attn: the sweep (process {parent}) is gone; this job stops (it resumes from its "
                  f"last checkpoint when the sweep is run again)", file=sys.stderr, flush=True)
            os._exit(143)

        threading.Thread(target=watch, name="stop-with-the-sweep", daemon=True).start()
    return bool(_watched)


def isolate_failure(
    job: Callable[[], dict[str, Any]], run_dir: Path, overrides: list[str], in_sweep: bool
) -> dict[str, Any]:
    """Run ``job``; if it raises, record the error in ``run_dir/error.txt``.

    In a sweep (``in_sweep``) the failure is returned as ``{"status": "failed", "error": ...}`` so the
    launcher goes on with the other jobs; in a single run the error is printed on one screen and the
    process exits with status 1 (``cli/errors.py``), or, with ``--debug`` / ``HYDRA_FULL_ERROR=1``, the
    exception propagates with its traceback.
    A stale ``error.txt`` from an earlier attempt is removed first, so a re-run that succeeds is not
    reported as failed.
    """
    run_dir = Path(run_dir)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    if in_sweep:
        stop_with_the_sweep()
    try:
        return job()
    except Exception as error:
        path = record_failure(run_dir, error, overrides)
        if not in_sweep:
            if debug_requested():
                raise
            exit_with_error(error, details=path)
        log.error("Job failed (%s), the sweep goes on; traceback in %s", first_line(error), path)
        return {"status": "failed", "error": first_line(error), "run_dir": str(run_dir)}


@dataclass
class JobOutcome:
    """One job directory of a sweep: ``completed`` (this sweep), ``skipped`` (complete before),
    ``failed`` (error.txt) or ``incomplete`` (neither: still running, or killed)."""

    run_dir: str
    overrides: list[str]
    status: str
    error: str = ""


@dataclass
class SweepSummary:
    """What a sweep did, job by job."""

    sweep_dir: str
    jobs: list[JobOutcome] = field(default_factory=list)

    def with_status(self, *statuses: str) -> list[JobOutcome]:
        return [job for job in self.jobs if job.status in statuses]

    @property
    def failed(self) -> list[JobOutcome]:
        """Jobs that raised or never finished."""
        return self.with_status("failed", "incomplete")

    def text(self) -> str:
        """Counts, then one line per failed job: its overrides and its error."""
        counts = ", ".join(
            f"{len(self.with_status(status))} {status}"
            for status in ("completed", "skipped", "failed", "incomplete")
        )
        lines = [f"Sweep {self.sweep_dir}: {len(self.jobs)} jobs: {counts}."]
        if self.with_status("skipped"):
            lines.append("  skipped = already complete (metrics.json); skip_completed=false re-runs them.")
        shared = set.intersection(*(set(job.overrides) for job in self.jobs)) if len(self.jobs) > 1 else set()
        for job in self.failed:
            swept = [item for item in job.overrides if item not in shared]  # what tells jobs apart
            lines.append(f"  FAILED {' '.join(swept) or '(no overrides)'}")
            lines.append(f"    {job.error}  [{job.run_dir}]")
        if self.failed:
            lines.append("  Re-run the same command to retry the failed jobs (completed ones are skipped).")
        return "\n".join(lines)


def summarize_sweep(sweep_dir: Path, started_ns: int) -> SweepSummary:
    """Classify the job directories under ``sweep_dir`` whose Hydra job record (written by Hydra when
    a job starts) is not older than ``started_ns`` (the sweep stamp's mtime)."""
    summary = SweepSummary(str(sweep_dir))
    for record in sorted(Path(sweep_dir).rglob(".hydra/overrides.yaml")):
        if record.stat().st_mtime_ns < started_ns:
            continue  # a job of an earlier sweep into the same directory
        run_dir = record.parent.parent
        overrides = [str(item) for item in OmegaConf.load(record)]
        metrics, error = run_dir / METRICS_FILE, run_dir / ERROR_FILE
        if error.exists():
            message = (error.read_text().splitlines() or [""])[0]
            outcome = JobOutcome(str(run_dir), overrides, "failed", message)
        elif metrics.exists():
            status = "completed" if metrics.stat().st_mtime_ns >= started_ns else "skipped"
            outcome = JobOutcome(str(run_dir), overrides, status)
        else:
            outcome = JobOutcome(
                str(run_dir), overrides, "incomplete", "no metrics.json and no error.txt (killed?)"
            )
        summary.jobs.append(outcome)
    return summary


# The summary of the last sweep run in this process (read by the entry point for its exit code), and
# the sweep in progress (so an entry point can still summarise when a launcher itself crashed).
_last_summary: SweepSummary | None = None
_running_sweep: tuple[Path, int] | None = None


def _finish_sweep(sweep_dir: Path, started_ns: int) -> SweepSummary:
    global _last_summary, _running_sweep
    summary = summarize_sweep(sweep_dir, started_ns)
    tmp = sweep_dir / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps({"jobs": [asdict(job) for job in summary.jobs]}, indent=2) + "\n")
    tmp.replace(sweep_dir / SUMMARY_FILE)
    (log.error if summary.failed else log.info)("%s", summary.text())
    _last_summary, _running_sweep = summary, None
    return summary


class SweepSummaryCallback(Callback):
    """Hydra callback: stamp the sweep directory at the start, summarise the jobs at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _running_sweep, _last_summary
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        stamp = sweep_dir / SWEEP_STAMP
        stamp.write_text(f"{time.time()}\n")
        _running_sweep, _last_summary = (sweep_dir, stamp.stat().st_mtime_ns), None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _running_sweep is not None:
            _finish_sweep(*_running_sweep)


def exit_code_of_last_sweep() -> int:
    """1 if the last sweep of this process had failed or unfinished jobs, else 0.

    If the sweep never reached its end (a launcher crashed, e.g. a killed joblib worker or a
    submitit job lost by the cluster), the job directories are summarised now and the code is 1.
    """
    if _running_sweep is not None:
        _finish_sweep(*_running_sweep)
        return 1
    return 1 if _last_summary is not None and _last_summary.failed else 0
