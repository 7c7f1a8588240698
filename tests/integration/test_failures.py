"""Failure isolation in sweeps: a failing job is recorded, the others finish, the sweep exits non-zero,
and re-running the same sweep skips what completed and retries what failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from anomaly_attn.cli import jobs
from anomaly_attn.cli.jobs import (
    SweepSummaryCallback,
    exit_code_of_last_sweep,
    isolate_failure,
    summarize_sweep,
)
from tests.conftest import run_cli
from tests.fixtures import make_mvtec_tree

CATEGORIES = ("bottle", "cable", "capsule")


def failing_job() -> dict:
    raise RuntimeError("cannot decode image cable/000.png\nsecond line")


def test_a_failing_job_writes_error_txt_and_returns_a_marker_in_a_sweep(tmp_path: Path) -> None:
    (tmp_path / "error.txt").write_text("stale error of an earlier attempt\n")
    assert isolate_failure(lambda: {"pixel_auroc": 0.9}, tmp_path, ["category=bottle"], True) == {
        "pixel_auroc": 0.9
    }
    assert not (tmp_path / "error.txt").exists(), "a successful re-run clears the old error"

    marker = isolate_failure(failing_job, tmp_path, ["category=cable"], in_sweep=True)

    assert marker["status"] == "failed"
    assert marker["error"] == "RuntimeError: cannot decode image cable/000.png"
    text = (tmp_path / "error.txt").read_text()
    assert text.splitlines()[0] == marker["error"]
    assert "overrides: category=cable" in text and "Traceback" in text and "in failing_job" in text


def test_a_failing_single_run_prints_one_screen_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("ANOMALY_ATTN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        isolate_failure(failing_job, tmp_path, [], in_sweep=False)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: RuntimeError: cannot decode image cable/000.png\nsecond line\n")
    assert f"traceback in {tmp_path / 'error.txt'}" in err and "Traceback" not in err
    assert "Traceback" in (tmp_path / "error.txt").read_text()


def test_a_failing_single_run_raises_with_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_DEBUG", "1")
    with pytest.raises(RuntimeError, match="cannot decode"):
        isolate_failure(failing_job, tmp_path, [], in_sweep=False)
    assert (tmp_path / "error.txt").exists()


def make_job_dir(sweep_dir: Path, name: str, files: dict[str, str]) -> Path:
    run_dir = sweep_dir / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- {name}\n- seed=0\n")
    for file_name, text in files.items():
        (run_dir / file_name).write_text(text)
    return run_dir


def test_the_summary_classifies_this_sweeps_jobs_and_sets_the_exit_code(tmp_path: Path) -> None:
    old = make_job_dir(tmp_path, "category=old", {"error.txt": "ValueError: an earlier sweep\n"})
    skipped = make_job_dir(tmp_path, "category=grass", {"metrics.json": "{}"})
    for path in (old / ".hydra" / "overrides.yaml", skipped / "metrics.json"):
        os.utime(path, ns=(0, 0))  # written before this sweep started
    callback = SweepSummaryCallback()
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    callback.on_multirun_start(config)
    (skipped / ".hydra" / "overrides.yaml").write_text("- category=grass\n- seed=0\n")  # relaunched
    make_job_dir(tmp_path, "category=brick", {"metrics.json": "{}"})
    make_job_dir(tmp_path, "category=cable", {"error.txt": "CorruptImageError: cannot decode x.png\n\nmore"})
    make_job_dir(tmp_path, "category=wood", {})
    callback.on_multirun_end(config)

    summary = jobs._last_summary
    assert {Path(job.run_dir).name: job.status for job in summary.jobs} == {
        "category=brick": "completed",
        "category=cable": "failed",
        "category=grass": "skipped",
        "category=wood": "incomplete",
    }
    text = summary.text()
    assert "4 jobs: 1 completed, 1 skipped, 1 failed, 1 incomplete" in text
    assert "FAILED category=cable\n    CorruptImageError: cannot decode x.png" in text
    assert "seed=0" not in text, "overrides shared by every job are left out"
    assert json.loads((tmp_path / "sweep_summary.json").read_text())["jobs"][1]["status"] == "failed"
    assert exit_code_of_last_sweep() == 1
    # Counted from the beginning of time, the earlier sweep's failed job is there too.
    assert {job.run_dir for job in summarize_sweep(tmp_path, 0).with_status("failed")} == {
        str(old), str(tmp_path / "category=cable")
    }


def folder_sweep_args(root: Path, sweep_dir: Path) -> list[str]:
    """A three-category sweep over an MVTec-layout folder, trained for one tiny epoch."""
    return [
        "-m",
        "dataset=folder",
        f"dataset.root={root}",
        f"category={','.join(CATEGORIES)}",
        "dataset.image_size=64",
        "dataset.batch_size=4",
        "dataset.num_workers=0",
        "trainer.max_epochs=1",
        "logger=csv",
        "visualization.max_overlays=0",
        # Four training images per category: too few held-out ones for synthetic validation.
        "validation=none",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def job_dir(sweep_dir: Path, category: str) -> Path:
    (path,) = sweep_dir.glob(f"category={category},*")
    return path


@pytest.mark.slow
def test_a_corrupt_category_fails_alone_and_a_rerun_retries_only_it(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=CATEGORIES)
    corrupt = root / "cable" / "train" / "good" / "000.png"
    corrupt.write_bytes(b"\x89PNG garbage, not an image")
    sweep_dir = tmp_path / "sweep"

    first = run_cli(folder_sweep_args(root, sweep_dir), cwd=tmp_path)

    assert first.returncode == 1, first.stderr[-3000:]
    run_dirs = {category: job_dir(sweep_dir, category) for category in CATEGORIES}
    for category in ("bottle", "capsule"):
        metrics = json.loads((run_dirs[category] / "metrics.json").read_text())
        assert metrics["category"] == category and 0.0 <= metrics["pixel_auroc"] <= 1.0
    error = (run_dirs["cable"] / "error.txt").read_text()
    assert error.splitlines()[0].startswith("CorruptImageError") and str(corrupt) in error
    assert "Traceback" in error and "category=cable" in error
    assert not (run_dirs["cable"] / "metrics.json").exists()
    log = first.stdout + first.stderr
    assert "3 jobs: 2 completed, 0 skipped, 1 failed, 0 incomplete" in log
    assert "FAILED category=cable" in log and "CorruptImageError" in log
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())["jobs"]
    assert {Path(job["run_dir"]).name.split(",")[0]: job["status"] for job in summary} == {
        "category=bottle": "completed",
        "category=cable": "failed",
        "category=capsule": "completed",
    }

    # Repair the image and re-run the same command: only cable trains again.
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(corrupt)
    done_before = {c: (run_dirs[c] / "metrics.json").stat().st_mtime_ns for c in ("bottle", "capsule")}

    second = run_cli(folder_sweep_args(root, sweep_dir), cwd=tmp_path)

    assert second.returncode == 0, second.stderr[-3000:]
    assert "3 jobs: 1 completed, 2 skipped, 0 failed, 0 incomplete" in second.stdout + second.stderr
    assert not (run_dirs["cable"] / "error.txt").exists()
    assert json.loads((run_dirs["cable"] / "metrics.json").read_text())["category"] == "cable"
    for category, mtime in done_before.items():
        assert (run_dirs[category] / "metrics.json").stat().st_mtime_ns == mtime, f"{category} re-ran"
