"""Map selection inside a real job: what it reads, what it writes, what the command line fixes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from anomaly_attn.data.dataset import AnomalyImageDataset
from anomaly_attn.jobs import train as train_module
from anomaly_attn.jobs.train import train_job
from anomaly_attn.training import selection_step
from tests.conftest import compose_cfg, run_cli, tiny_overrides


def test_selection_reads_only_training_images_and_writes_its_block(tmp_path: Path, monkeypatch) -> None:
    """Spy on every image the selection step reads: all come from the training split (held-out normals
    and foreign-texture sources; the feature memory's training images), none from the test split; then
    the block lands in metrics.json."""
    read_paths: list[str] = []
    selecting = {"now": False}
    original_getitem = AnomalyImageDataset.__getitem__
    original_tensor = AnomalyImageDataset.images_tensor

    def spy_getitem(self, index):
        if selecting["now"]:
            read_paths.append(str(self.records[index].path))
        return original_getitem(self, index)

    def spy_tensor(self):
        if selecting["now"]:
            read_paths.extend(str(record.path) for record in self.records)
        return original_tensor(self)

    def spying(function):
        def spy(*args, **kwargs):
            selecting["now"] = True
            try:
                return function(*args, **kwargs)
            finally:
                selecting["now"] = False

        return spy

    monkeypatch.setattr(AnomalyImageDataset, "__getitem__", spy_getitem)
    monkeypatch.setattr(AnomalyImageDataset, "images_tensor", spy_tensor)
    # Building the synthetic validation set (before training) and the selection itself (after it).
    monkeypatch.setattr(train_module, "synthetic_validation", spying(train_module.synthetic_validation))
    monkeypatch.setattr(selection_step, "select_on_validation", spying(selection_step.select_on_validation))
    cfg = compose_cfg(
        tiny_overrides(**{"selection.smoothing_sigmas": "[0,2]", "selection.stage2_width": "2",
                          "selection.feature_memory.layers": "[encoder.5,encoder.11]"})
    )
    metrics = train_job(cfg, tmp_path)

    assert read_paths, "the selection read no images"
    assert all("/train/good/" in path for path in read_paths), [p for p in read_paths if "/train/" not in p]
    selection = metrics["selection"]
    assert selection["objective"] == "mean_auroc_aupro"
    assert selection["chosen"]["label"] == metrics["selected_map"]
    assert len(selection["candidates"]) > 20
    assert {c["family"] for c in selection["candidates"]} >= {
        "attention",
        "attention+residual",
        "residual_l2",
        "feature_memory",
        "feature_memory+residual",
    }
    memory_layers = {c["spec"]["layer"] for c in selection["candidates"] if c["family"] == "feature_memory"}
    assert memory_layers == {"encoder.5", "encoder.11"}
    assert any(note.startswith("feature memory (pool 3): encoder.5 (") for note in selection["notes"])
    chosen_value = selection["chosen"]["validation"]
    assert 0.0 <= chosen_value["pixel_auroc"] <= 1.0
    assert "posthoc_test" not in selection["candidates"][0]  # off by default
    # The controls carry their validation scores next to their test scores.
    residual = metrics["controls"]["residual_l2"]
    assert set(residual["validation"]) >= {"pixel_auroc", "pixel_aupro", "image_auroc"}
    assert "pixel_auroc" in metrics["validation"]
    assert (tmp_path / "figures" / "validation_samples.png").stat().st_size > 1000
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["selection"]["chosen"] == selection["chosen"]
    # The checkpoint carries the choice, so predict uses the same map without validation data.
    state = torch.load(tmp_path / "checkpoints" / "model.ckpt", weights_only=True)
    assert state["selected_maps"]["map"]["smoothing_sigma"] == selection["chosen"]["spec"]["smoothing_sigma"]
    # ... and the feature memory exactly when the chosen map or image score uses it.
    specs = (selection["chosen"]["spec"], selection["chosen_image_score"]["map"])
    used = {spec["layer"] for spec in specs if spec["source"] == "feature_memory"}
    assert set(state.get("feature_memory", {}).get("banks", {})) == used


def test_a_layer_on_the_command_line_stays_fixed(tmp_path: Path) -> None:
    """layer=encoder.16 on the command line: selection chooses only variant/input/fusion/smoothing."""
    overrides = tiny_overrides(
        **{"layer": "encoder.16", "selection.smoothing_sigmas": "[0]", "hydra.run.dir": str(tmp_path)}
    )
    result = run_cli(overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["layer"] == "encoder.16"
    assert {c["spec"]["layer"] for c in metrics["selection"]["candidates"]} == {"encoder.16"}
    assert metrics["selection"]["fixed"] == {"layer": "encoder.16"}


def test_an_unknown_candidate_is_refused_before_any_training(tmp_path: Path) -> None:
    import pytest

    cfg = compose_cfg(tiny_overrides(**{"selection.variants": "[mean_abs_cam,gradcamm]"}))
    with pytest.raises(ValueError, match=r"selection.variants: unknown \['gradcamm'\]; valid: \["):
        train_job(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    cfg = compose_cfg(tiny_overrides(**{"selection.layers": "[encoder.99]"}))
    with pytest.raises(
        ValueError, match=r"selection.layers: unknown \['encoder.99'\]; valid: \[.*encoder.26"
    ):
        train_job(cfg, tmp_path)


def test_a_validation_split_too_small_fails_before_training_naming_val_fraction(tmp_path: Path) -> None:
    import pytest

    cfg = compose_cfg(tiny_overrides(**{"dataset.val_fraction": "0.04"}))  # 48 images: 2 held out
    with pytest.raises(ValueError, match=r"raise dataset.val_fraction \(now given as 0.04\)"):
        train_job(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
