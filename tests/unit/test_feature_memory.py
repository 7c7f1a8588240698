"""Feature-memory maps: a memory of training patches in the model's own encoder features, each test
patch's distance to its nearest neighbour there, as a candidate of map selection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.feature_memory import FeatureMemory, auto_memory_layers, nearest_distances
from anomaly_attn.maps.selection import select_maps
from anomaly_attn.maps.selection_result import SelectionSettings
from anomaly_attn.maps.specs import MapSpec, ScoreSpec
from anomaly_attn.models import create_model, layer_shapes
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.trainer import save_model_checkpoint
from tests.fixtures import planted_set

LAYERS = ["encoder.2", "encoder.10"]


@pytest.fixture(scope="module")
def engine() -> MapEngine:
    """An untrained conv_ae (seed 0) on uncentred images, with a memory of 16 smooth normal images."""
    torch.manual_seed(0)
    model = create_model("conv_ae", image_size=64, in_channels=1).eval()
    engine = MapEngine(model, 64, 1, {"variant": "mean_abs_cam"}, center_input=False)
    train, _, _ = planted_set(count=16, seed=1)
    engine.memory = FeatureMemory.build(model, train[:16].split(8), 16, LAYERS, patches=4096, seed=0)
    return engine


def test_nearest_distances_match_a_brute_force_search_in_any_chunking() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(37, 5, generator=generator), torch.randn(23, 5, generator=generator)
    expected = ((queries[:, None] - bank[None]) ** 2).sum(-1).sqrt().amin(dim=1)
    for chunk in (1, 23, 50, 10_000):  # one query at a time up to all at once
        torch.testing.assert_close(nearest_distances(queries, bank, chunk), expected, atol=1e-4, rtol=1e-4)
    # A query that is in the memory is at distance 0.
    assert nearest_distances(bank[:3], bank).abs().max() < 1e-3


def test_the_memory_is_bounded_seeded_and_drawn_from_every_image(engine: MapEngine) -> None:
    model = engine.model
    train, _, _ = planted_set(count=16, seed=1)
    train = train[:16]
    again = FeatureMemory.build(model, train.split(8), 16, LAYERS, patches=4096, seed=0)
    for layer in LAYERS:
        torch.testing.assert_close(again.banks[layer], engine.memory.banks[layer], rtol=0, atol=0)
    other_seed = FeatureMemory.build(model, train.split(8), 16, ["encoder.2"], patches=4096, seed=1)
    assert not torch.equal(other_seed.banks["encoder.2"], engine.memory.banks["encoder.2"])
    # encoder.2 has 32×32 patches per image: the bank is cut to `patches`; encoder.10 (8×8 = 64 per
    # image, 1024 in all) keeps every patch.
    assert engine.memory.banks["encoder.2"].shape == (4096, 32)
    assert engine.memory.banks["encoder.10"].shape == (16 * 64, 32)
    small = FeatureMemory.build(model, train.split(8), 16, ["encoder.2"], patches=100, seed=0)
    assert small.banks["encoder.2"].shape == (100, 32) and small.nbytes() == 100 * 32 * 4
    with pytest.raises(ValueError, match="odd"):
        FeatureMemory(pool=2)


def test_a_feature_memory_map_peaks_inside_the_planted_defect(engine: MapEngine) -> None:
    images, masks, labels = planted_set(count=8, seed=0)
    anomalous, defect = images[labels == 1], masks[labels == 1]
    near_defect = F.max_pool2d(defect, 7, stride=1, padding=3)  # the square and 3 px around it
    # encoder.2 (32×32 patches): untrained features localize the square. (At encoder.10, 8×8 patches of an
    # untrained model, they do not: there the map's maximum is within 3 px of the square on 2 of 8 images.)
    maps = engine.render_specs(anomalous, [MapSpec(source="feature_memory", layer="encoder.2")])[0][0]
    assert maps.shape == defect.shape
    peaks = maps.flatten(1).argmax(dim=1)
    inside = near_defect.flatten(1).gather(1, peaks[:, None]).squeeze(1)
    assert inside.all(), f"the map's maximum is outside the defect on {int((inside == 0).sum())} image(s)"
    # The whole defect stands out, not a single pixel: mean inside ≥ 5× mean outside (measured: 11.8×).
    mean_in = (maps * defect).sum() / defect.sum()
    mean_out = (maps * (1 - near_defect)).sum() / (1 - near_defect).sum()
    assert mean_in > 5 * mean_out
    # A normal image the memory was not built from scores far lower than the defects.
    clean = images[labels == 0]
    memory_map = MapSpec(source="feature_memory", layer="encoder.2")
    clean_max = engine.render_specs(clean, [memory_map])[0][0].amax()
    defect_max = engine.render_specs(anomalous, [memory_map])[0][0].flatten(1).amax(dim=1)
    assert (defect_max > clean_max).all()


def test_a_feature_memory_map_alone_skips_the_reconstruction_and_is_the_same_map(engine: MapEngine) -> None:
    images, _, _ = planted_set(count=4, seed=1)
    memory_map = MapSpec(source="feature_memory", layer="encoder.2")
    alone, reconstruction = engine.render_specs(images, [memory_map])
    assert reconstruction is None  # nothing read it: the decoder did not run
    with_residual, reconstruction = engine.render_specs(images, [memory_map, MapSpec(source="residual_l2")])
    assert reconstruction is not None and torch.equal(alone[0], with_residual[0])


def test_selection_scores_feature_memory_maps_only_when_asked(engine: MapEngine) -> None:
    images, masks, labels = planted_set(count=8, seed=0)
    settings = SelectionSettings(
        variants=["layercam"], inputs=["residual"], fusions=["none", "zsum"], smoothing_sigmas=[0, 2],
        stage2_width=1, prior=None,
    )
    without = select_maps(engine, images, masks, labels, settings, {}, ["encoder.10"], batch_size=8)
    assert not any(c.spec.source == "feature_memory" for c in without.candidates)
    result = select_maps(
        engine, images, masks, labels, settings, {}, ["encoder.10"], batch_size=8, memory_layers=LAYERS
    )
    families = {c.spec.family for c in result.candidates}
    assert {"feature_memory", "feature_memory+residual"} <= families
    memory = [c for c in result.candidates if c.spec.source == "feature_memory"]
    # Every memory layer, smoothed with every σ and fused both ways, zsum with validation statistics.
    assert {(c.spec.layer, c.spec.smoothing_sigma, c.spec.fusion) for c in memory} == {
        (layer, sigma, fusion) for layer in LAYERS for sigma in (0.0, 2.0) for fusion in ("none", "zsum")
    }
    assert all(c.spec.zsum_stats is not None for c in memory if c.spec.fusion == "zsum")
    best_memory = max(c.validation["pixel_auroc"] for c in memory)
    assert best_memory > 0.95  # the untrained features find the bright squares
    # A fixed layer is a layer ablation of attention: no memory candidate then.
    fixed = select_maps(
        engine, images, masks, labels, settings, {"layer": "encoder.10"}, ["encoder.10"], batch_size=8,
        memory_layers=LAYERS,
    )
    assert not any(c.spec.source == "feature_memory" for c in fixed.candidates)


def test_specs_and_settings_name_what_is_wrong() -> None:
    spec = MapSpec(source="feature_memory", layer="encoder.2", fusion="zsum", smoothing_sigma=2.0)
    assert spec.label == "feature_memory@encoder.2+z(residual_l2) σ2"
    assert spec.family == "feature_memory+residual" and not spec.is_control
    assert MapSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="needs a layer"):
        MapSpec(source="feature_memory")
    with pytest.raises(ValueError, match="unknown"):
        SelectionSettings.from_config({"feature_memory": {"layer": ["encoder.2"]}})
    with pytest.raises(ValueError, match="odd"):
        SelectionSettings.from_config({"feature_memory": {"layers": "auto", "pool": 2}})
    settings = SelectionSettings.from_config({"feature_memory": {"layers": ["encoder.99"]}})
    with pytest.raises(ValueError, match="encoder.99"):
        settings.validate(["encoder.1", "encoder.2"])


def test_auto_layers_take_the_deepest_layer_of_each_resolution() -> None:
    at_64 = layer_shapes(create_model("conv_ae", image_size=64, in_channels=1), 64, 1)
    # 32², 16², 8², 4² (2×2 maps are too coarse to localize).
    assert auto_memory_layers(at_64) == ["encoder.2", "encoder.5", "encoder.11", "encoder.17"]
    # At 128²: 64² maps cost 4× the 32² ones, so auto starts at 32².
    at_128 = layer_shapes(create_model("conv_ae", image_size=128, in_channels=1), 128, 1)
    assert auto_memory_layers(at_128) == ["encoder.5", "encoder.11", "encoder.17", "encoder.26"]


def test_the_checkpoint_keeps_the_memory_the_selected_maps_use(engine: MapEngine, tmp_path) -> None:
    torch.manual_seed(0)
    module = AnomalyModule(
        {"name": "conv_ae", "image_size": 64, "in_channels": 1}, {"mse": 1.0}, {"variant": "mean_abs_cam"},
        center_input=False,
    ).eval()
    module.model.load_state_dict(engine.model.state_dict())
    module.engine.memory = FeatureMemory(dict(engine.memory.banks), engine.memory.pool)
    selected = MapSpec(source="feature_memory", layer="encoder.10", fusion="product", smoothing_sigma=1.0)
    module.engine.set_selected_maps(selected, ScoreSpec(selected, "max"))
    images = torch.rand(6, 1, 64, 64)
    module.calibrate([{"image": images}])
    path = tmp_path / "model.ckpt"
    save_model_checkpoint(module, path)
    state = torch.load(path, weights_only=True)
    assert set(state["feature_memory"]["banks"]) == {"encoder.10"}  # not the unused encoder.2
    loaded = MapEngine.from_checkpoint(path)
    maps, _ = loaded.compute_maps(images)
    expected, _ = module.engine.compute_maps(images)
    torch.testing.assert_close(maps["selected"], expected["selected"])
    # A checkpoint without the memory a map needs says what to run.
    loaded.memory = FeatureMemory()
    with pytest.raises(ValueError, match="anomaly_attn.evaluate"):
        loaded.compute_maps(images)


def test_the_selection_step_builds_only_the_memory_it_lacks_from_the_training_images() -> None:
    from omegaconf import OmegaConf

    from anomaly_attn.training.selection_step import ensure_feature_memory

    torch.manual_seed(0)
    module = AnomalyModule(
        {"name": "conv_ae", "image_size": 64, "in_channels": 1}, {"mse": 1.0}, {"variant": "mean_abs_cam"}
    ).eval()
    train, _, _ = planted_set(count=6, seed=2)
    reads = []

    class Training:  # the datamodule's one method the step may call
        def train_images_tensor(self) -> torch.Tensor:
            reads.append(1)
            return train[:6]

    cfg = OmegaConf.create({"model": {"image_size": 64, "in_channels": 1}, "dataset": {"batch_size": 4},
                            "seed": 3})
    loaded = torch.full((5, 32), 7.0)  # as a checkpoint brought it
    module.engine.memory = FeatureMemory({"encoder.5": loaded}, pool=3)
    settings = SelectionSettings.from_config({"feature_memory": {"layers": ["encoder.5", "encoder.11"]}})
    layers, note = ensure_feature_memory(cfg, module, Training(), settings)
    assert layers == ["encoder.5", "encoder.11"] and reads == [1]
    assert module.engine.memory.banks["encoder.5"] is loaded  # kept, not rebuilt
    assert module.engine.memory.banks["encoder.11"].shape == (6 * 64, 32)  # 8×8 patches × 6 images
    assert "built in" in note
    layers, note = ensure_feature_memory(cfg, module, Training(), settings)
    assert reads == [1] and "already built" in note  # nothing left to build: no image read
    off = SelectionSettings.from_config({"feature_memory": {"layers": []}})
    assert ensure_feature_memory(cfg, module, Training(), off) == ([], "")
    # The default (auto) takes the deepest layer at each resolution from 4×4 to 32×32, and bounds one
    # image's distances: the 32×32 layer keeps 4096 of its 6 × 1024 patches, the 4×4 one all 6 × 16.
    layers, _ = ensure_feature_memory(cfg, module, Training(), SelectionSettings.from_config({}))
    assert layers == ["encoder.2", "encoder.5", "encoder.11", "encoder.17"]
    banks = module.engine.memory.banks
    assert len(banks["encoder.2"]) == (1 << 22) // (32 * 32) == 4096 and len(banks["encoder.17"]) == 6 * 16


def test_features_stop_the_forward_once_every_layer_is_captured(engine: MapEngine) -> None:
    from anomaly_attn.maps.feature_memory import layer_features

    model, images = engine.model, torch.rand(3, 1, 64, 64)
    decoder_calls = []
    handle = model.decoder.register_forward_hook(lambda *_: decoder_calls.append(1))
    try:
        features = layer_features(model, images, ["encoder.5", "encoder.2"], pool=1)
        assert not decoder_calls  # the decoder never ran
        kept = {}
        hooks = [model.encoder[i].register_forward_hook(lambda _m, _i, out, i=i: kept.__setitem__(i, out))
                 for i in (2, 5)]
        with torch.no_grad():
            model(images)  # a full pass: the same features
        for hook in hooks:
            hook.remove()
        assert decoder_calls
    finally:
        handle.remove()
    torch.testing.assert_close(features["encoder.2"], kept[2], rtol=0, atol=0)
    torch.testing.assert_close(features["encoder.5"], kept[5], rtol=0, atol=0)
