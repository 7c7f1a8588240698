"""Resume after a kill: checkpoints every epoch, `resume=true` continues from last.ckpt with the
optimizer, loop progress and random states, and metrics.json says so."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_attn.training.callbacks import RngStateCheckpoint
from tests.conftest import REPO, tiny_overrides

MAX_EPOCHS = 6


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_random_states_survive_a_weights_only_checkpoint_round_trip() -> None:
    callback = RngStateCheckpoint()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    buffer = io.BytesIO()
    torch.save({"callbacks": {"rng": callback.state_dict()}}, buffer)
    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    buffer.seek(0)
    callback.load_state_dict(torch.load(buffer, weights_only=True)["callbacks"]["rng"])
    assert draws() == expected


def train_command(run_dir: Path, *extra: str) -> list[str]:
    overrides = tiny_overrides(**{"trainer.max_epochs": str(MAX_EPOCHS), "category": "brick"})
    return [sys.executable, "-m", "anomaly_attn.train", *overrides, f"hydra.run.dir={run_dir}", *extra]


@pytest.mark.slow
def test_a_killed_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(
        train_command(run_dir), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while not last_ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    job.send_signal(signal.SIGKILL)
    _, stderr = job.communicate(timeout=60)
    assert last_ckpt.exists(), stderr.decode()[-3000:]
    assert not (run_dir / "metrics.json").exists(), "the job finished before it could be killed"
    killed_at = torch.load(last_ckpt, weights_only=True)
    assert killed_at["epoch"] < MAX_EPOCHS - 1
    assert "RngStateCheckpoint" in killed_at["callbacks"] and killed_at["optimizer_states"]

    resumed = subprocess.run(
        train_command(run_dir, "resume=true"), cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=900,
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(last_ckpt)
    assert metrics["epochs"] == MAX_EPOCHS
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    final = torch.load(last_ckpt, weights_only=True)
    assert final["epoch"] == MAX_EPOCHS - 1
    # Steps continue from the checkpoint instead of restarting: one optimizer step per batch, all epochs.
    steps_per_epoch = killed_at["global_step"] // (killed_at["epoch"] + 1)
    assert final["global_step"] == steps_per_epoch * MAX_EPOCHS


@pytest.mark.slow
def test_sigterm_saves_last_checkpoint_mid_epoch_and_resuming_completes_every_step(tmp_path: Path) -> None:
    """SIGTERM (what SLURM sends on preemption or requeue) stops training at the end of the current
    batch with last.ckpt saved there: status 143, no error.txt; resume=true finishes every epoch's steps."""
    run_dir = tmp_path / "run"
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    overrides = tiny_overrides(**{"trainer.max_epochs": "6", "category": "brick", "validation": "none"})
    command = [sys.executable, "-m", "anomaly_attn.train", *overrides, f"hydra.run.dir={run_dir}"]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not last_ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    first_step = torch.load(last_ckpt, weights_only=True)["global_step"]
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 128 + signal.SIGTERM, stderr.decode()[-3000:]
    log = (run_dir / "train.log").read_text()  # the job's log (Hydra)
    assert "Received SIGTERM: stopping the job" in log, log[-3000:]
    assert not (run_dir / "error.txt").exists() and not (run_dir / "metrics.json").exists()
    stopped_at = torch.load(last_ckpt, weights_only=True)
    # Saved at the end of the batch the signal let finish ("Saved ..."), or, when the signal came during
    # an epoch's end (Lightning stops there itself), the checkpoint of that epoch.
    assert first_step <= stopped_at["global_step"] and stopped_at["epoch"] < 5
    if "Saved " in log:
        assert f"step {stopped_at['global_step']} after SIGTERM" in log

    resumed = subprocess.run(
        [*command, "resume=true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(last_ckpt) and metrics["epochs"] == 6
    steps_per_epoch = -(-metrics["n_train"] // 16)  # tiny_overrides: dataset.batch_size=16
    assert torch.load(last_ckpt, weights_only=True)["global_step"] == steps_per_epoch * 6
