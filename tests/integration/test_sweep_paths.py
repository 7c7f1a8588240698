"""A sweep job's own folder (named by its overrides: ``=``, ``,``) works as an argument to every CLI, and
a sweep re-run after a yaml change re-runs the changed jobs instead of reporting stale numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli, tiny_overrides


def _sweep(tmp_path: Path, config_dir: Path) -> tuple[list[str], dict[str, str]]:
    args = [
        "-m",
        *tiny_overrides(),
        "validation=none",
        "experiment=mine",
        "category=brick,grass",
        f"paths.output_dir={tmp_path / 'out'}",
    ]
    return args, {"ANOMALY_ATTN_CONFIG_DIR": str(config_dir)}


def _run(args: list[str], cwd: Path, env: dict[str, str], module: str = "anomaly_attn.train"):
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return run_cli(args, cwd, module=module)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict[str, str]]:
    tmp_path = tmp_path_factory.mktemp("sweep_paths")
    config_dir = tmp_path / "myconf"
    (config_dir / "experiment").mkdir(parents=True)
    (config_dir / "experiment" / "mine.yaml").write_text("# @package _global_\noptimizer:\n  lr: 0.001\n")
    args, env = _sweep(tmp_path, config_dir)
    done = _run(args, tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path, args, env


def _job_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "out").rglob("multirun/*/metrics.json"))


@pytest.mark.slow
def test_sweep_folders_hold_reserved_characters(sweep) -> None:
    tmp_path, _, _ = sweep
    jobs = _job_dirs(tmp_path)
    assert len(jobs) == 2
    assert all("=" in job.name and "," in job.name for job in jobs)  # what users copy from the report


@pytest.mark.slow
def test_evaluate_and_predict_take_a_sweep_jobs_checkpoint_unquoted(sweep) -> None:
    tmp_path, _, env = sweep
    job = _job_dirs(tmp_path)[0]
    ckpt = job / "checkpoints" / "model.ckpt"
    done = _run(
        [f"ckpt_path={ckpt}", "logger=csv", f"paths.output_dir={tmp_path / 'eval'}"],
        tmp_path, env, module="anomaly_attn.evaluate",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics_file,) = (tmp_path / "eval").rglob("metrics.json")
    assert json.loads(metrics_file.read_text())["source_checkpoint"] == str(ckpt.resolve())

    images = tmp_path / "in=1,2 x"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{index}.png")
    out = job / "predictions"  # the output folder inside the sweep job's folder, also unquoted
    done = _run(
        [f"ckpt_path={ckpt}", f"input_dir={images}", f"output_dir={out}"],
        tmp_path, env, module="anomaly_attn.predict",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.rglob("*.png"))) >= 2


def test_a_bad_argument_names_itself_and_the_quoting_that_works(tmp_path: Path) -> None:
    done = run_cli(["seed=1=2"], tmp_path)
    assert done.returncode == 2
    assert "cannot parse the argument 'seed=1=2'" in done.stderr
    assert "\"seed='1=2'\"" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_sweep_rerun_after_a_yaml_change_reruns_the_changed_jobs(sweep) -> None:
    tmp_path, args, env = sweep
    jobs = _job_dirs(tmp_path)
    before = {job: json.loads((job / "metrics.json").read_text())["provenance"] for job in jobs}
    (Path(env["ANOMALY_ATTN_CONFIG_DIR"]) / "experiment" / "mine.yaml").write_text(
        "# @package _global_\noptimizer:\n  lr: 0.002\n"
    )
    done = _run(args, tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert log.count("the config changed since it ran") == 2
    for job in jobs:
        after = json.loads((job / "metrics.json").read_text())["provenance"]
        assert after["config_digest"] != before[job]["config_digest"]
    done = _run(args, tmp_path, env)  # nothing changed now: both jobs are skipped
    assert done.returncode == 0
    assert (done.stdout + done.stderr).count("metrics.json exists for this config and code") == 2
