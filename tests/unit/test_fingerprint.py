"""Stale results: config/code digests, skip_completed re-runs changed jobs, report marks and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from anomaly_attn.cli.report import main as report_main
from anomaly_attn.common.fingerprint import code_digest, config_digest, fingerprint, stale_reason
from anomaly_attn.reporting.runs import find_runs, swept_keys
from anomaly_attn.run.store import completed_metrics, job_fingerprint
from tests.unit.test_report import write_run

BASE = {
    "seed": 0,
    "optimizer": {"lr": 0.001},
    "dataset": {"name": "textures", "root": "/data/a", "image_size": 64},
    "paths": {"output_dir": "outputs"},
    "logger": {"wandb": {"mode": "offline"}},
    "skip_completed": True,
}


def test_config_digest_ignores_paths_and_run_only_keys() -> None:
    moved = json.loads(json.dumps(BASE))
    moved["dataset"]["root"] = "/elsewhere"
    moved["paths"]["output_dir"] = "/tmp/out"
    moved["logger"] = {"csv": {}}
    moved["resume"] = True
    moved["dataset"]["cache"] = {"enabled": False, "max_gb": 1}
    assert config_digest(moved) == config_digest(BASE)
    changed = json.loads(json.dumps(BASE))
    changed["optimizer"]["lr"] = 0.01
    assert config_digest(changed) != config_digest(BASE)
    resized = json.loads(json.dumps(BASE))
    resized["dataset"]["image_size"] = 128
    assert config_digest(resized) != config_digest(BASE)


def test_fingerprint_records_version_commit_and_code() -> None:
    record = fingerprint(BASE)
    assert {"config_digest", "code_digest", "version", "git_commit", "git_dirty"} <= set(record)
    assert record["code_digest"] == code_digest() and len(record["code_digest"]) == 16


def test_stale_reason_names_what_changed() -> None:
    current = fingerprint(BASE)
    assert stale_reason({"provenance": current}, current) is None
    assert "no fingerprint" in stale_reason({"provenance": {"version": "0.1"}}, current)
    code = stale_reason({"provenance": {**current, "code_digest": "x"}}, current)
    assert code == "the code changed since it ran"
    both = stale_reason({"provenance": {**current, "code_digest": "x", "config_digest": "y"}}, current)
    assert both == "the config and the code changed since it ran"


def _finished(cfg) -> dict:
    return {"pixel_auroc": 0.9, "provenance": job_fingerprint(cfg)}


def test_skip_completed_skips_only_matching_jobs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = OmegaConf.create(BASE)
    (tmp_path / "metrics.json").write_text(json.dumps(_finished(cfg)))
    assert completed_metrics(cfg, tmp_path)["pixel_auroc"] == 0.9
    cfg.optimizer.lr = 0.5  # a yaml edited after the sweep ran
    with caplog.at_level("WARNING"):
        assert completed_metrics(cfg, tmp_path) is None
    assert "the config changed" in caplog.text
    (tmp_path / "metrics.json").write_text(json.dumps({"pixel_auroc": 0.9}))  # an old metrics.json
    assert completed_metrics(cfg, tmp_path) is None
    cfg.skip_completed = False
    (tmp_path / "metrics.json").write_text(json.dumps(_finished(cfg)))
    assert completed_metrics(cfg, tmp_path) is None


def _sweep(tmp_path: Path) -> Path:
    """A 3-job category sweep with a multirun.yaml, each run with a config.yaml and code digest."""
    sweep = tmp_path / "multirun"
    rng = np.random.default_rng(0)
    for category in ("brick", "grass", "gravel"):
        run = sweep / f"category={category}"
        write_run(run, category, "encoder.16", rng)
        config = {**BASE, "category": category, "layer": "encoder.16"}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["provenance"] = fingerprint(config)
        (run / "metrics.json").write_text(json.dumps(metrics))
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["category=brick,grass,gravel", "seed=0"]}}})
    )
    return sweep


def test_report_marks_runs_from_another_config_or_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = _sweep(tmp_path)
    assert not any(run.stale for run in find_runs(sweep))  # only the swept key differs
    grass = sweep / "category=grass"
    config = yaml.safe_load((grass / "config.yaml").read_text())
    config["optimizer"]["lr"] = 0.5
    (grass / "config.yaml").write_text(yaml.safe_dump(config))
    gravel = sweep / "category=gravel" / "metrics.json"
    metrics = json.loads(gravel.read_text())
    metrics["provenance"]["code_digest"] = "0123456789abcdef"
    gravel.write_text(json.dumps(metrics))
    stale = {run.path.name: run.stale for run in find_runs(sweep)}
    assert stale["category=brick"] == ""
    assert stale["category=grass"] == "its config differs from the rest of the sweep in optimizer.lr"
    assert stale["category=gravel"] == "it ran other code than the rest of the sweep"
    assert report_main([str(sweep), "--rows", "category", "--cols", "layer", "--no-figures"]) == 0
    summary = (sweep / "report" / "summary.md").read_text()
    assert "optimizer.lr" in summary and "other code" in summary
    table = (sweep / "report" / "table.md").read_text()
    assert table.count("†") == 3  # two cells and the footnote
    page = (sweep / "report" / "index.html").read_text()
    assert "optimizer.lr" in page and page.count("†") >= 5  # 2 cells, the note, 2 runs-table entries


def test_keys_a_preset_sweeps_in_its_sweeper_params_are_swept(tmp_path: Path) -> None:
    """A preset's hydra.sweeper.params (category: mono,poly) varies its keys as a command-line sweep does:
    its runs are not marked as differing from each other in them."""
    sweep = _sweep(tmp_path)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["experiment=elpv_study", "seed=0"]},
        "sweeper": {"params": {"category": "brick,grass,gravel"}},
    }}))
    assert swept_keys(sweep) == {"category"}
    assert not any(run.stale for run in find_runs(sweep))


def test_report_exit_status_for_failed_and_unfinished_runs(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    args = [str(sweep), "--no-figures"]
    assert report_main(args) == 0
    unfinished = sweep / "category=sand"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("category: sand\n")
    assert report_main(args) == 1  # never finished: no metrics.json, no error.txt
    (unfinished / "config.yaml").unlink()
    unfinished.rmdir()
    failed = sweep / "category=stone"
    failed.mkdir()
    (failed / "config.yaml").write_text("category: stone\n")
    (failed / "error.txt").write_text("RuntimeError: boom\n")
    assert report_main(args) == 1


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--metric", "pixel_aurco", ["--metric 'pixel_aurco'", "Did you mean: pixel_auroc", "image_auroc"]),
        ("--rows", "categroy", ["--rows 'categroy'", "Did you mean: category", "dataset.image_size"]),
        ("--cols", "layer,los", ["--cols 'los'", "Did you mean: loss"]),
    ],
)
def test_report_refuses_unknown_keys_listing_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str, value: str, expected: list[str]
) -> None:
    sweep = _sweep(tmp_path)
    assert report_main([str(sweep), "--no-figures", option, value]) == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err
    assert not (sweep / "report" / "table.md").exists()


def test_keys_set_by_a_presets_several_sweeps_count_as_swept(tmp_path: Path) -> None:
    """experiment=attention_study runs a Fashion-MNIST sweep and a textures sweep into one folder;
    multirun.yaml keeps the last one's overrides only, so the white and gray runs were marked as differing
    from the rest in dataset.corruption (a false † in every table of the study)."""
    sweep = _sweep(tmp_path)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "overrides": {"task": ["experiment=attention_study", "dataset=textures", "category=brick,grass",
                               "trainer.max_epochs=30", "seed=0,1,2"]},
    }}))
    keys = swept_keys(sweep)
    assert {"category", "seed", "dataset", "dataset.corruption", "trainer.max_epochs"} <= keys
    # The swept dataset brings its own model: a fmnist run is compared with fmnist runs only.
    for name in ("category=brick", "category=grass"):
        config = yaml.safe_load((sweep / name / "config.yaml").read_text())
        config["dataset"]["name"], config["model"] = "fmnist", {"name": "mnist_ae"}
        (sweep / name / "config.yaml").write_text(yaml.safe_dump(config))
    assert not any(run.stale for run in find_runs(sweep))
    config = yaml.safe_load((sweep / "category=grass" / "config.yaml").read_text())
    config["optimizer"]["lr"] = 0.5  # ...and still marked where it differs from them
    (sweep / "category=grass" / "config.yaml").write_text(yaml.safe_dump(config))
    stale = {run.path.name: run.stale for run in find_runs(sweep)}
    assert "optimizer.lr" in stale["category=grass"] or "optimizer.lr" in stale["category=brick"]
