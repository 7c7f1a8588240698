"""Sweeps through the joblib (parallel processes) and submitit (local executor) launchers: both run
every job, write complete run directories and a sweep summary; W&B offline runs close in workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from anomaly_attn.training.trainer import check_ddp_launch
from tests.conftest import run_cli, tiny_overrides

CATEGORIES = ("brick", "grass")


def sweep(tmp_path: Path, launcher: str, *extra: str) -> tuple[Path, str]:
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            f"hydra/launcher={launcher}",
            f"category={','.join(CATEGORIES)}",
            *tiny_overrides(),
            *extra,
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "2 jobs: 2 completed, 0 skipped, 0 failed, 0 incomplete" in log
    return sweep_dir, log


def test_relaunching_ddp_is_refused_in_a_local_sweep_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The variables by which Lightning detects SLURM, torchelastic, LSF and MPI.
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LSB_JOBID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE", raising=False)
    ddp = OmegaConf.create({"strategy": "ddp", "devices": 2})
    with pytest.raises(ValueError, match="trainer.strategy=ddp_spawn"):
        check_ddp_launch(ddp, in_sweep=True)
    check_ddp_launch(ddp, in_sweep=False)  # a single run: Lightning re-launches it into the same run dir
    check_ddp_launch(OmegaConf.create({"strategy": "ddp_spawn", "devices": 2}), in_sweep=True)
    check_ddp_launch(OmegaConf.create({"strategy": "ddp", "devices": 1}), in_sweep=True)
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    check_ddp_launch(ddp, in_sweep=True)  # SLURM starts one process per task: nothing is re-launched


def completed_categories(sweep_dir: Path) -> list[str]:
    return sorted(json.loads(path.read_text())["category"] for path in sweep_dir.rglob("metrics.json"))


@pytest.mark.slow
def test_joblib_sweep_runs_both_jobs_in_workers_with_offline_wandb(tmp_path: Path) -> None:
    sweep_dir, log = sweep(tmp_path, "joblib", "logger=wandb")
    assert "Joblib.Parallel(n_jobs=2" in log
    assert completed_categories(sweep_dir) == list(CATEGORIES)
    for category in CATEGORIES:
        (run_dir,) = sweep_dir.glob(f"category={category}*")
        (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
        # wandb.finish() ran in the loky worker: the run was finished and its stream closed.
        assert "finishing run" in (wandb_run / "logs" / "debug.log").read_text()
        assert "stream: all finished" in (wandb_run / "logs" / "debug-internal.log").read_text()


@pytest.mark.slow
def test_submitit_local_sweep_runs_both_jobs(tmp_path: Path) -> None:
    sweep_dir, _ = sweep(tmp_path, "submitit_local", "hydra.launcher.timeout_min=20")
    assert completed_categories(sweep_dir) == list(CATEGORIES)
    assert list((sweep_dir / ".submitit").glob("*/*_log.out")), "submitit job logs"


@pytest.mark.slow
def test_ddp_cpu_two_processes_in_a_sweep_score_every_test_image_once(tmp_path: Path, data_dir: Path) -> None:
    """ddp_spawn inside a Hydra multirun; DistributedSampler would pad the test set, so scoring runs on
    one process: n_test is the test-set size and no image is scored twice."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            *tiny_overrides(**{"category": "brick", "trainer.max_epochs": "2"}),
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (metrics_path,) = sweep_dir.rglob("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    test_images = sorted(str(p) for p in (data_dir / "textures" / "brick" / "test").rglob("*.png"))
    assert metrics["n_test"] == len(test_images) == 14
    rows = (metrics_path.parent / "per_image_scores.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == test_images
    assert metrics["epochs"] == 2 and metrics["resumed_from"] is None
    for key in ("pixel_auroc", "pixel_aupro", "image_auroc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert all(0.0 <= v["pixel_auroc"] <= 1.0 for v in metrics["controls"].values())
