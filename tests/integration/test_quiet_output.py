"""Quiet by default: a tiny training job, run as a user would (a subprocess, W&B on, an ``srun`` on the
PATH as on a machine with SLURM installed), prints each log record once and none of the third-party noise;
``--verbose`` brings the noise back; the job ends with its summary."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides, user_env

NOISE = (
    "srun",
    "litlogger",
    "litmodels",
    "_pytree",
    "LeafSpec",
    "anonymous",
    "log_every_n_steps",
    "GPU available",
)


def _train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_srun = bin_dir / "srun"  # Lightning hints at srun whenever one is on the PATH
    fake_srun.write_text("#!/bin/sh\nexit 0\n")
    fake_srun.chmod(0o755)
    env = user_env("WANDB_SILENT", "ANOMALY_ATTN_VERBOSE")
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", WANDB_MODE="offline")
    overrides = tiny_overrides(logger="wandb", **{"selection.map": "fixed", "validation": "none"})
    return subprocess.run(
        [sys.executable, "-m", "anomaly_attn.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp_path = tmp_path_factory.mktemp("quiet")
    return _train(tmp_path), tmp_path


def test_each_record_is_printed_once_and_no_third_party_noise(quiet_run) -> None:
    result, _ = quiet_run
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = [line for line in output.splitlines() if line.strip()]
    repeated = {line: count for line, count in Counter(lines).items() if count > 1}
    assert not repeated, repeated
    assert not any(line.startswith("INFO: ") for line in lines), output
    for word in NOISE:
        assert word not in output, (word, output)


def test_the_job_ends_with_its_summary(quiet_run) -> None:
    result, tmp_path = quiet_run
    tail = result.stdout[result.stdout.index("Finished textures/brick (conv_ae):") :]
    for label in ("selected map", "image AUROC", "pixel AUROC", "pixel AUPRO", "run folder", "checkpoint"):
        assert label in tail, tail
    assert f"run folder     {tmp_path / 'run'}" in tail
    assert "(residual_l2 0." in tail or "(residual_l2 1.000)" in tail


def test_the_log_file_keeps_every_record(quiet_run) -> None:
    _, tmp_path = quiet_run
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "[lightning.pytorch.utilities.rank_zero][INFO]" in log_text


def test_verbose_shows_the_third_party_messages(tmp_path: Path) -> None:
    result = _train(tmp_path, "--verbose")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "srun" in result.stdout + result.stderr
