"""A real SLURM sweep (``hydra/launcher=submitit_slurm``) on a single-node cluster started for the test:
both jobs finish, and a job that gets SLURM's time-limit signal twice is requeued twice by submitit,
resumes from last.ckpt each time and is reported as completed (not failed) with exit status 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, tiny_overrides
from tests.slurm_cluster import single_node_cluster, unavailable

pytestmark = pytest.mark.slow

INTERRUPTED, OTHER = "brick", "grass"


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    reason = unavailable()
    if reason:
        pytest.skip(f"no single-node SLURM cluster: {reason}")
    with single_node_cluster(tmp_path_factory.mktemp("slurm")) as cluster_env:
        yield {**os.environ, **cluster_env, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


def squeue_ids(env: dict[str, str]) -> dict[str, str]:
    """Array task id (``"<job>_<task>"``) -> state, for the jobs SLURM knows now."""
    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i %T"], env=env, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def last_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def wait_for(condition, timeout_s: float, what: str, sweep: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if sweep.poll() is not None:
            raise AssertionError(f"the sweep ended while waiting for {what}:\n{sweep.stdout.read()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_submitit_slurm_sweep_requeues_a_timed_out_job_and_reports_it_completed(
    slurm_env: dict[str, str], tmp_path: Path
) -> None:
    sweep_dir = tmp_path / "sweep"
    overrides = tiny_overrides(
        **{
            "trainer.max_epochs": "12",
            "validation": "none",
            "logger": "wandb",
            "threads": "1",
            "category": f"{INTERRUPTED},{OTHER}",
        }
    )
    command = [
        sys.executable, "-m", "anomaly_attn.train", "-m", "hydra/launcher=submitit_slurm", *overrides,
        f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.timeout_min=10", "hydra.launcher.max_num_timeout=3",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
        "hydra.launcher.signal_delay_s=30",
    ]
    sweep = subprocess.Popen(
        command, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: len(squeue_ids(slurm_env)) == 2, 120, "the job array", sweep)
        job_id = min(squeue_ids(slurm_env))  # array task 0 = the first category
        wait_for(lambda: list(sweep_dir.glob(f"category={INTERRUPTED}*")), 300, "the run directory", sweep)
        (interrupted_dir,) = sweep_dir.glob(f"category={INTERRUPTED}*")
        last_ckpt = interrupted_dir / "checkpoints" / "last.ckpt"
        steps_at_signal = []
        for _ in range(2):
            # Wait for progress in this attempt, then send what SLURM sends before the time limit.
            previous = max(steps_at_signal, default=-1)
            wait_for(lambda p=previous: last_step(last_ckpt) > p, 600, "training progress", sweep)
            wait_for(lambda: squeue_ids(slurm_env).get(job_id) == "RUNNING", 300, "the job to run", sweep)
            subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True, timeout=30)
            wait_for(lambda: squeue_ids(slurm_env).get(job_id) != "RUNNING", 120, "the requeue", sweep)
            steps_at_signal.append(last_step(last_ckpt))
        log, _ = sweep.communicate(timeout=900)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()

    assert sweep.returncode == 0, log[-4000:]
    assert "2 jobs: 2 completed, 0 skipped, 0 failed, 0 incomplete" in log, log[-4000:]
    assert not list(sweep_dir.rglob("error.txt"))
    metrics = {(m := json.loads(path.read_text()))["category"]: m for path in sweep_dir.rglob("metrics.json")}
    assert sorted(metrics) == sorted([INTERRUPTED, OTHER])
    assert metrics[OTHER]["resumed_from"] is None
    resumed = metrics[INTERRUPTED]
    assert resumed["resumed_from"] == str(last_ckpt)
    assert resumed["epochs"] == 12
    # Each attempt saved last.ckpt at the signal (mid-epoch) and the next one continued from there.
    assert steps_at_signal[1] > steps_at_signal[0] > 0
    final = torch.load(last_ckpt, weights_only=True)
    assert final["epoch"] == 11
    # SLURM ran it three times; every attempt closed its W&B run and none failed on it.
    restarts = subprocess.run(
        ["scontrol", "show", "job", job_id], env=slurm_env, capture_output=True, text=True, timeout=30
    ).stdout
    assert "Restarts=2" in restarts, restarts
    job_logs = "\n".join(path.read_text() for path in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert job_logs.count("Saved ") >= 2 and "after SIGUSR2" in job_logs
    assert "ConnectionResetError" not in job_logs and "Job failed" not in job_logs
    wandb_runs = sorted((interrupted_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 3
    for run in wandb_runs:
        assert "finishing run" in (run / "logs" / "debug.log").read_text()
