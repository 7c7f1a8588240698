"""The map engine: the LightningModule's maps without Lightning, loaded from a checkpoint."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly_attn.maps import attention_map
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.specs import MapSpec, ScoreSpec
from anomaly_attn.training.checkpoint import load_module
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.trainer import save_model_checkpoint
from tests.conftest import REPO

MODEL = {"name": "conv_ae", "image_size": 64, "in_channels": 1}
ATTENTION = {"variant": "mean_abs_cam", "input": "residual", "smoothing_sigma": 0.0, "fusion": "none"}


def trained_like_module() -> AnomalyModule:
    """A module as a run leaves it: mean image set, a fused map selected, thresholds calibrated."""
    torch.manual_seed(0)
    module = AnomalyModule(MODEL, {"mse": 1.0}, ATTENTION, layer="encoder.2").eval()
    module.set_mean_image(torch.linspace(0.2, 0.6, 64 * 64).view(1, 64, 64))
    selected = MapSpec("attention", "encoder.14", "layercam", "image", "product", 1.0)
    score = ScoreSpec(MapSpec("residual_l2", smoothing_sigma=2.0), "topk_mean")
    module.engine.set_selected_maps(selected, score)
    module.calibrate([{"image": torch.rand(4, 1, 64, 64)}, {"image": torch.rand(3, 1, 64, 64)}])
    return module


def assert_same_maps(engine: MapEngine, reference: MapEngine, images: torch.Tensor) -> None:
    maps, reconstruction = engine.compute_maps(images)
    expected, expected_reconstruction = reference.compute_maps(images)
    assert maps.keys() == expected.keys()
    for name, value in maps.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(reconstruction, expected_reconstruction, rtol=0, atol=0)
    scores, expected_scores = engine.map_scores(maps), reference.map_scores(expected)
    for name in engine.map_names:
        torch.testing.assert_close(scores[name], expected_scores[name], rtol=0, atol=0, msg=name)


def test_the_modules_engine_reads_and_writes_the_modules_buffers() -> None:
    module = trained_like_module()
    thresholds = module.calibrate([{"image": torch.rand(5, 1, 64, 64)}])
    # Calibration through the engine lands in the buffers that checkpoints save.
    assert module.state_dict()["image_thresholds"][0] == pytest.approx(thresholds["selected"]["image"])
    assert torch.isfinite(module.pixel_thresholds).all()
    # A move replaces the buffers: the engine follows (centring uses the moved mean image).
    module.to(torch.float64)
    for key in ("mean_image", "pixel_thresholds", "image_thresholds"):
        assert getattr(module.engine, key) is getattr(module, key)
    assert module.engine.mean_image.dtype == torch.float64
    module.to(torch.float32)
    images = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(module.network_input(images), images - module.mean_image)


def test_from_checkpoint_rebuilds_the_runs_maps_scores_and_thresholds(tmp_path: Path) -> None:
    module = trained_like_module()
    checkpoint = tmp_path / "model.ckpt"
    save_model_checkpoint(module, checkpoint)
    engine = MapEngine.from_checkpoint(checkpoint)
    assert not engine.model.training
    assert (engine.map_spec, engine.score_spec) == (module.engine.map_spec, module.engine.score_spec)
    for key in ("mean_image", "pixel_thresholds", "image_thresholds"):
        torch.testing.assert_close(getattr(engine, key), getattr(module, key), rtol=0, atol=0)
    images = torch.rand(3, 1, 64, 64)
    assert_same_maps(engine, module.engine, images)
    # The Lightning loader (evaluate's) gives the same engine state.
    assert_same_maps(engine, load_module(checkpoint).engine, images)


def test_from_checkpoint_applies_overrides_and_pads_thresholds_of_newer_controls(tmp_path: Path) -> None:
    module = trained_like_module()
    checkpoint = tmp_path / "model.ckpt"
    save_model_checkpoint(module, checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    # A checkpoint trained before the last control map was registered has one threshold fewer.
    for key in ("pixel_thresholds", "image_thresholds"):
        state["state_dict"][key] = state["state_dict"][key][:-1]
    older = tmp_path / "older.ckpt"
    torch.save(state, older)
    engine = MapEngine.from_checkpoint(older, {"layer": "encoder.16", "threshold_quantile": 0.5})
    assert engine.layer == "encoder.16" and engine.threshold_quantile == 0.5
    assert torch.isnan(engine.image_thresholds[-1])
    torch.testing.assert_close(engine.image_thresholds[:-1], module.image_thresholds[:-1])


def test_from_checkpoint_errors_name_the_file_and_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ckpt_path is required"):
        MapEngine.from_checkpoint("")
    with pytest.raises(FileNotFoundError, match=r"missing.ckpt does not exist; pass a run's"):
        MapEngine.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes.txt is not a checkpoint \(torch saves .*ckpt") as error:
        MapEngine.from_checkpoint(tmp_path / "notes.txt")
    assert "weights_only" not in str(error.value)
    torch.save({"state_dict": {"w": torch.ones(64, 64)}}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.ckpt is truncated or corrupted .*model.ckpt") as error:
        MapEngine.from_checkpoint(tmp_path / "truncated.ckpt")
    assert "weights_only" not in str(error.value)
    torch.save({"object": datetime.date(2026, 1, 1)}, tmp_path / "pickled.ckpt")  # not a weights-only type
    with pytest.raises(ValueError, match=r"pickled.ckpt holds objects other than tensors") as error:
        MapEngine.from_checkpoint(tmp_path / "pickled.ckpt")
    assert "weights_only" not in str(error.value)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt holds no AnomalyModule hyper-parameters"):
        MapEngine.from_checkpoint(tmp_path / "other.pt")
    torch.save({"hyper_parameters": {"model": MODEL, "attention": ATTENTION}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match=r"bare.ckpt has no mean_image, pixel_thresholds, image_thresholds"):
        MapEngine.from_checkpoint(tmp_path / "bare.ckpt")


def test_layer_maps_are_each_layers_attention_map_from_the_engines_input() -> None:
    module = trained_like_module()
    engine = module.engine
    images = torch.rand(2, 1, 64, 64)
    layers, variants = ["encoder.5", "encoder.14"], ["mean_abs_cam", "layercam"]
    network_input, reconstruction = engine.reconstruct(images)
    for source, attention_input in (("residual", images - reconstruction), ("image", network_input)):
        maps = engine.layer_maps(images, layers, variants, source)
        assert set(maps) == {(layer, variant) for layer in layers for variant in variants}
        for (layer, variant), layer_map in maps.items():
            expected = attention_map(engine.model, attention_input, layer, variant).detach()
            torch.testing.assert_close(layer_map, expected, rtol=1e-4, atol=1e-6)


def test_the_engine_and_predict_import_no_lightning() -> None:
    code = (
        "import json, sys\n"
        "import anomaly_attn.maps.engine, anomaly_attn.maps.selection, anomaly_attn.cli.predict\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_channels_last_maps_equal_the_default_formats_and_leave_the_model_as_it_was() -> None:
    """trainer.channels_last applies to the map engine too: the same maps (float rounding apart), every
    code path (compute_maps, layer_maps), and the model's memory format is put back afterwards."""
    module = trained_like_module()
    engine = module.engine
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    expected, _ = engine.compute_maps(images)
    expected_layers = engine.layer_maps(images, ["encoder.2", "encoder.14"], ["gradcam", "mean_abs_cam"])
    module.configure_speed(channels_last=True)
    assert engine.channels_last
    maps, _ = engine.compute_maps(images)
    layers = engine.layer_maps(images, ["encoder.2", "encoder.14"], ["gradcam", "mean_abs_cam"])
    for name, value in maps.items():
        scale = expected[name].abs().max()
        torch.testing.assert_close(value / scale, expected[name] / scale, rtol=0, atol=1e-4, msg=name)
    for key, value in layers.items():
        scale = expected_layers[key].abs().max()
        reference = expected_layers[key] / scale
        torch.testing.assert_close(value / scale, reference, rtol=0, atol=1e-4, msg=str(key))
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # back in the default format
    # A model already in channels-last (during a fit) is left in it.
    module.model.to(memory_format=torch.channels_last)
    engine.compute_maps(images)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_checkpoint_from_before_0_2_loads_with_todays_names(tmp_path: Path) -> None:
    """A checkpoint whose hyper-parameters and stored selected map name the variant `seed` (its name
    before 0.2) loads, through the map engine and through Lightning, as `mean_abs_cam`, with the same
    maps; evaluate's config takes the checkpoint's map under today's group name `map`."""
    from anomaly_attn.jobs.job_config import config_for_checkpoint
    from tests.conftest import compose_cfg

    torch.manual_seed(0)
    old_attention = {**ATTENTION, "variant": "gradcam"}
    module = AnomalyModule(MODEL, {"mse": 1.0}, old_attention, layer="encoder.16").eval()
    module.engine.set_selected_maps(MapSpec("attention", "encoder.16", "mean_abs_cam", "residual"),
                                    ScoreSpec(MapSpec("attention", "encoder.16", "mean_abs_cam", "residual")))
    path = tmp_path / "model.ckpt"
    save_model_checkpoint(module, path)
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"]["attention"]["variant"] = "seed"
    state["selected_maps"]["map"]["variant"] = "seed"
    state["selected_maps"]["score"]["map"]["variant"] = "seed"
    torch.save(state, path)

    engine = MapEngine.from_checkpoint(path)
    assert engine.map_spec.variant == "mean_abs_cam" and engine.map_spec.label.startswith("mean_abs_cam@")
    assert_same_maps(engine, module.engine, torch.rand(2, 1, 64, 64))
    assert load_module(path).engine.map_spec == engine.map_spec
    cfg = config_for_checkpoint(compose_cfg([f"ckpt_path={path}"], "evaluate"), [f"ckpt_path={path}"])
    assert cfg.map.variant == "seed" and "attention" not in cfg  # the hyper-parameters as stored
    assert MapSpec("attention", "encoder.16", cfg.map.variant, "residual").variant == "mean_abs_cam"
