"""Stop signals end a job cleanly (training.interruption): the job's own cleanup runs first, then the
handler that was installed before (submitit's checkpoint-and-requeue); an interruption is a SystemExit
with status 128 + signal, never a recorded failure."""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

import pytest

from anomaly_attn.cli.jobs import isolate_failure
from anomaly_attn.run.store import ERROR_FILE
from anomaly_attn.training.interruption import JobInterrupted, active_guard, interruptible, requeued_attempt


@pytest.fixture
def submitit_like_handler():
    """A callable SIGUSR2 handler standing in for submitit's (which requeues, then exits)."""
    calls: list[str] = []

    def requeue(signum, frame):
        calls.append(f"requeue {signal.Signals(signum).name}")
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, requeue)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_sigterm_outside_training_stops_the_job_at_once_with_status_143() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    reached_after_signal = False
    with pytest.raises(JobInterrupted) as stopped:
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            reached_after_signal = True
    assert stopped.value.code == 143 and not reached_after_signal
    assert signal.getsignal(signal.SIGTERM) is previous and active_guard() is None


def test_deferred_preempt_signal_cleans_up_before_submitit_requeues(submitit_like_handler: list[str]) -> None:
    events = submitit_like_handler
    with pytest.raises(SystemExit) as stopped:
        with interruptible() as guard:
            guard.defer = True  # what CheckpointOnSignal sets while a single-process fit runs
            try:
                os.kill(os.getpid(), signal.SIGUSR2)
                events.append("batch finished")  # the signal did not cut the batch short
                raise JobInterrupted(guard.received)  # what the callback raises after saving last.ckpt
            finally:
                events.append("wandb closed")  # train_job's finally
    assert events == ["batch finished", "wandb closed", "requeue SIGUSR2"]
    assert stopped.value.code == -1  # submitit's exit, not a failure


def test_the_wandb_service_stops_before_submitit_requeues(
    submitit_like_handler: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The requeue's SIGTERM also reaches wandb-core; W&B's exit hook must not find it dead (CI saw a
    ConnectionResetError traceback in a requeued attempt's log)."""
    events = submitit_like_handler
    fake_wandb = types.ModuleType("wandb")
    fake_wandb.teardown = lambda: events.append("wandb service stopped")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    with pytest.raises(SystemExit):
        with interruptible():
            os.kill(os.getpid(), signal.SIGUSR2)
    assert events == ["wandb service stopped", "requeue SIGUSR2"]


def test_an_error_after_the_signal_counts_as_the_interruption(submitit_like_handler: list[str]) -> None:
    with pytest.raises(SystemExit):
        with interruptible() as guard:
            guard.defer = True
            os.kill(os.getpid(), signal.SIGUSR2)
            raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Terminated.")
    assert submitit_like_handler == ["requeue SIGUSR2"]


def test_a_job_that_finishes_despite_the_signal_is_not_requeued(submitit_like_handler: list[str]) -> None:
    with interruptible() as guard:
        guard.defer = True
        os.kill(os.getpid(), signal.SIGUSR2)
        result = "metrics"
    assert result == "metrics" and submitit_like_handler == []


def test_interruption_is_not_a_failure_but_no_requeue_left_is(tmp_path: Path) -> None:
    def interrupted_job() -> dict:
        with interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with pytest.raises(JobInterrupted):
        isolate_failure(interrupted_job, tmp_path, overrides=["category=brick"], in_sweep=True)
    assert not (tmp_path / ERROR_FILE).exists()

    def out_of_timeouts(signum, frame):  # submitit when max_num_timeout is used up
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    previous = signal.signal(signal.SIGUSR2, out_of_timeouts)
    try:

        def last_attempt() -> dict:
            with interruptible():
                os.kill(os.getpid(), signal.SIGUSR2)
            return {}

        outcome = isolate_failure(last_attempt, tmp_path, overrides=["category=brick"], in_sweep=True)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert outcome["status"] == "failed"
    assert (tmp_path / ERROR_FILE).read_text().startswith("RuntimeError: Job not requeued because: timed-out")


def test_requeued_attempt_reads_slurm_restart_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_attempt() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert requeued_attempt() == 2


def test_lightning_auto_requeue_is_off_when_submitit_runs_the_slurm_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from anomaly_attn.training.trainer import make_trainer
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["logger=csv"])
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    plain_sbatch = make_trainer(cfg, tmp_path, [], [])._accelerator_connector.cluster_environment
    assert isinstance(plain_sbatch, SLURMEnvironment) and plain_sbatch.auto_requeue  # Lightning's own
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path))
    under_submitit = make_trainer(cfg, tmp_path, [], [])._accelerator_connector.cluster_environment
    assert isinstance(under_submitit, SLURMEnvironment) and not under_submitit.auto_requeue


def test_jobs_of_several_slurm_tasks_keep_the_handlers_they_had(
    submitit_like_handler: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_NTASKS", "2")
    before = signal.getsignal(signal.SIGUSR2)
    with interruptible():
        assert signal.getsignal(signal.SIGUSR2) is before


_SWEEP_LIKE = """
import os, sys, time
from pathlib import Path
from joblib import Parallel, delayed
from anomaly_attn.cli.jobs import isolate_failure

def job(folder):
    def work():
        Path(folder, f"{os.getpid()}.pid").write_text("")
        time.sleep(120)
        return {}
    return isolate_failure(work, Path(folder), [], in_sweep=True)

Parallel(n_jobs=2, backend="loky")(delayed(job)(sys.argv[1]) for _ in range(2))
"""


def test_joblib_jobs_stop_when_the_sweep_is_killed(tmp_path: Path) -> None:
    # hydra/launcher=joblib: a killed sweep left its loky workers training on for hours.
    import subprocess
    import time

    sweep = subprocess.Popen([sys.executable, "-c", _SWEEP_LIKE, str(tmp_path)])
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = [int(path.stem) for path in tmp_path.glob("*.pid")]
        assert len(workers) == 2
    finally:
        sweep.kill()
        sweep.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "loky workers outlived the killed sweep"
