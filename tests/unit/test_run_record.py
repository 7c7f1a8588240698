"""The run record (anomaly_attn/run/): metrics.json's fields defined once, written and read in one place,
old runs' names translated in one place, and the renamed command-line names still accepted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from anomaly_attn.cli.arguments import translate_renamed
from anomaly_attn.run.record import IDENTITY_FIELDS, SELECTED, RunRecord, translate_old_keys
from anomaly_attn.run.store import (
    completed_metrics,
    job_fingerprint,
    read_image_scores,
    read_metrics,
    read_record,
    read_run_config,
    write_per_image_scores,
    write_record,
)


def a_record() -> RunRecord:
    return RunRecord(
        test={"image_auroc": 0.9, "pixel_auroc": 0.8, "per_defect": {"hole": {"image_auroc": 1.0}}},
        identity={"dataset": "textures", "category": "brick", "model": "conv_ae", "layer": "encoder.16",
                  "variant": "gradcam", "selected_map": "gradcam@encoder.16[residual]", "seed": 0},
        controls={"residual_l2": {"image_auroc": 0.7, "validation": {"pixel_auroc": 0.6}}},
        validation={"pixel_auroc": 0.85},
        selection={"objective": "mean_auroc_aupro"},
        facts={"n_test": 14, "thresholds": {SELECTED: [0.1, 0.2]}},
        provenance={"config_digest": "abc"},
        timing={"test_s": 1.5},
    )


def test_a_record_round_trips_through_metrics_json(tmp_path: Path) -> None:
    written = write_record(tmp_path, a_record())
    assert json.loads((tmp_path / "metrics.json").read_text()) == written
    assert read_record(tmp_path) == a_record()
    # The selected map's test metrics are the top level; the identity fields keep their order.
    assert written["image_auroc"] == 0.9 and written["controls"]["residual_l2"]["image_auroc"] == 0.7
    order = [key for key in written if key in IDENTITY_FIELDS]
    assert order == [key for key in IDENTITY_FIELDS if key in order]


def test_old_runs_are_read_in_todays_names(tmp_path: Path) -> None:
    old = {"image_auroc": 0.9, "baselines": {"residual_l2": {}}, "attention": "seed",
           "experiment": "seed_repro"}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    assert read_metrics(tmp_path) == {"image_auroc": 0.9, "controls": {"residual_l2": {}},
                                      "variant": "mean_abs_cam", "experiment": "research_schedule"}
    # A run that has both spellings keeps its own values under both.
    both = {"controls": {"a": {}}, "baselines": {"b": {}}}
    assert translate_old_keys(both) == both
    (tmp_path / "config.yaml").write_text(
        "attention:\n  variant: seed\n  weight: 0.1\nseed: 3\nselection:\n  variants: [seed, layercam]\n"
    )
    assert read_run_config(tmp_path) == {
        "map": {"variant": "mean_abs_cam", "weight": 0.1}, "seed": 3,
        "selection": {"variants": ["mean_abs_cam", "layercam"]},
    }


def test_per_image_scores_are_read_with_the_old_column_name(tmp_path: Path) -> None:
    rows = [
        {"path": "a.png", "defect_type": "good", "label": 0, "score_attention": 0.5, "score_x": 1.0},
        {"path": "b.png", "defect_type": "hole", "label": 1, "score_attention": 0.7, "score_x": 2.0},
    ]
    write_per_image_scores(tmp_path / "per_image_scores.csv", rows)
    columns = read_image_scores(tmp_path)
    np.testing.assert_array_equal(columns["score_selected"], [0.5, 0.7])
    np.testing.assert_array_equal(columns["label"], [0, 1])
    assert read_image_scores(tmp_path / "missing") is None


def test_completed_metrics_needs_skip_completed_and_a_matching_fingerprint(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"skip_completed": True, "seed": 0, "dataset": {"name": "textures"}})
    assert completed_metrics(cfg, tmp_path / "run") is None  # nothing there yet
    record = a_record()
    record.provenance = job_fingerprint(cfg)
    written = write_record(tmp_path / "run", record)
    assert completed_metrics(cfg, tmp_path / "run") == written
    changed = OmegaConf.create({"skip_completed": True, "seed": 1, "dataset": {"name": "textures"}})
    assert completed_metrics(changed, tmp_path / "run") is None
    off = OmegaConf.create({"skip_completed": False, "seed": 0, "dataset": {"name": "textures"}})
    assert completed_metrics(off, tmp_path / "run") is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("attention=seed", "map=mean_abs_cam"),
        ("attention=gradcam", "map=gradcam"),
        ("attention.weight=0.1", "map.weight=0.1"),
        ("+attention.beta=1", "+map.beta=1"),
        ("map=seed,gradcam_abs", "map=mean_abs_cam,gradcam_abs"),
        ("map.variant=seed", "map.variant=mean_abs_cam"),
        ("experiment=seed_repro", "experiment=research_schedule"),
    ],
)
def test_renamed_command_line_names_are_translated_with_a_note(
    old: str, new: str, capsys: pytest.CaptureFixture
) -> None:
    assert translate_renamed([old]) == [new]
    assert f"note: {old!r} is now spelt {new!r} (the old name works in 0.2" in capsys.readouterr().err


def test_todays_names_pass_unchanged(capsys: pytest.CaptureFixture) -> None:
    args = ["map=gradcam", "seed=3", "experiment=quickstart", "attentions=1", "dataset.root=/a,b"]
    assert translate_renamed(args) == args
    assert capsys.readouterr().err == ""
