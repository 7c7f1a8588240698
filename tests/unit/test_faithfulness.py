"""Faithfulness checks of maps (anomaly_attn/maps/faithfulness.py): deletion/insertion against a random
map and model randomization, on a small conv autoencoder trained here on smooth images with bright
blob defects. Each known answer is also shown to fail when its feature is disabled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_attn.maps import faithfulness
from anomaly_attn.maps.faithfulness import (
    FaithfulnessSettings,
    check_maps,
    normalized_areas,
    spearman_per_image,
    ssim_per_image,
    subset_indices,
)
from anomaly_attn.maps.specs import MapSpec, ScoreSpec
from anomaly_attn.training.module import AnomalyModule

SIZE = 64
RESIDUAL = MapSpec("residual_l2")
GRADIENT = MapSpec("attention", "encoder.5", "gradcam_abs", "residual", "none", 0.0)
HIGHPASS = MapSpec("image_highpass")


def smooth_images(count: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(count, 1, SIZE // 8, SIZE // 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear") * 0.5 + 0.25


@pytest.fixture(scope="module")
def trained() -> tuple[AnomalyModule, torch.Tensor]:
    """(module, anomalous images): a conv AE fitted to smooth images; test images carry a bright disc."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train = smooth_images(64, generator)
    attention = {"variant": "gradcam_abs", "input": "residual", "smoothing_sigma": 0.0, "fusion": "none"}
    module = AnomalyModule({"name": "conv_ae", "image_size": SIZE, "in_channels": 1}, {"mse": 1.0},
                           attention, layer="encoder.5")
    module.set_mean_image(train.mean(0))
    optimizer = torch.optim.Adam(module.model.parameters(), 1e-3)
    for _ in range(80):
        batch = train[torch.randint(0, len(train), (16,), generator=generator)]
        loss = (module.model(module.network_input(batch)).reconstruction - batch).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    module.engine.set_selected_maps(GRADIENT, ScoreSpec(RESIDUAL, "max"))
    images = smooth_images(12, generator)
    rows, cols = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    for image in images:
        row, col = torch.randint(8, SIZE - 8, (2,), generator=generator)
        disc = ((rows - row) ** 2 + (cols - col) ** 2 <= 16).float()
        image[0] = image[0] * (1 - disc) + disc
    return module, images


SETTINGS = FaithfulnessSettings(fractions=(0.01, 0.02, 0.05, 0.1), cascade=(0.5, 1.0), resamples=500)


def test_the_map_the_score_is_read_from_beats_a_random_map_on_deletion(trained, monkeypatch) -> None:
    module, images = trained
    block = check_maps(module.engine, images, {"residual_l2": RESIDUAL, "gradient": GRADIENT}, SETTINGS)
    json.dumps(block, allow_nan=False)  # metrics.json can hold it: no NaN (null where nothing was scored)
    residual = block["maps"]["residual_l2"]
    # The image score is the max of residual_l2: deleting its top pixels removes the score's source.
    assert residual["deletion_vs_random"]["high"] < 0
    assert residual["deletion_auc"] < 0.5 < block["random"]["deletion_auc"]
    assert residual["deletion_curve"][-1] < 0.3
    assert block["maps"]["gradient"]["deletion_vs_residual_l2"]["mean"] > 0  # the score's own map wins
    assert block["n_images"] == len(images) and block["score"] == "max of residual_l2"

    # Disabled (pixels replaced at random places instead of the map's top ones): no difference is left.
    def random_places(order: torch.Tensor, fraction: float, shape: torch.Size) -> torch.Tensor:
        shuffled = torch.argsort(torch.rand(order.shape, generator=torch.Generator().manual_seed(1)), dim=1)
        return top_mask(shuffled, fraction, shape)

    top_mask = faithfulness.top_mask
    monkeypatch.setattr(faithfulness, "top_mask", random_places)
    disabled = check_maps(module.engine, images, {"residual_l2": RESIDUAL}, SETTINGS)["maps"]["residual_l2"]
    assert not disabled["deletion_vs_random"]["high"] < 0


def test_a_gradient_map_changes_with_randomized_weights_and_the_high_pass_is_model_independent(
    trained, monkeypatch
) -> None:
    module, images = trained
    before = {key: value.clone() for key, value in module.model.state_dict().items()}
    maps = {"gradient": GRADIENT, "image_highpass": HIGHPASS}
    block = check_maps(module.engine, images, maps, SETTINGS)["maps"]
    gradient = block["gradient"]["randomization"]
    assert gradient["verdict"] == "changes" and gradient["spearman"][-1] < 0.4
    assert gradient["layers_randomized"][-1] == gradient["layers"] > 1
    assert block["image_highpass"]["randomization"]["verdict"] == "model-independent"
    assert block["image_highpass"]["randomization"]["spearman"] == [1.0, 1.0]
    for key, value in module.model.state_dict().items():  # the trained model is untouched
        assert torch.equal(value, before[key]), key

    # Disabled (no layer re-initialised): the gradient map no longer "changes".
    for kind in {type(layer) for layer in faithfulness.cascade_layers(module.model)}:
        monkeypatch.setattr(kind, "reset_parameters", lambda self: None)
    unchanged = check_maps(module.engine, images, {"gradient": GRADIENT}, SETTINGS)["maps"]["gradient"]
    assert unchanged["randomization"]["verdict"] != "changes"


def test_replacing_by_blur_is_offered_and_said(trained) -> None:
    module, images = trained
    settings = FaithfulnessSettings(fractions=(0.05, 0.1), cascade=(), resamples=100, replace="blur")
    block = check_maps(module.engine, images[:4], {"residual_l2": RESIDUAL}, settings)
    assert "blur" in block["replaced_by"] and "randomization" not in block["maps"]["residual_l2"]
    json.dumps(block, allow_nan=False)
    assert np.isfinite(block["maps"]["residual_l2"]["deletion_auc"])


def test_subset_is_seeded_and_anomalous_only() -> None:
    labels = [0, 1] * 20
    first = subset_indices(labels, 5, seed=3)
    assert first == subset_indices(labels, 5, seed=3) != subset_indices(labels, 5, seed=4)
    assert len(first) == 5 and all(labels[i] == 1 for i in first) and first == sorted(first)
    assert subset_indices([0, 0, 1], 16, seed=0) == [2] and subset_indices([0, 0], 4, seed=0) == []


def test_helpers_known_answers() -> None:
    maps = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(spearman_per_image(maps, maps), 1.0)
    np.testing.assert_allclose(spearman_per_image(maps, -maps), -1.0)
    assert np.isnan(spearman_per_image(maps, torch.zeros_like(maps))).all()
    np.testing.assert_allclose(ssim_per_image(maps, maps * 3 + 1), 1.0, atol=1e-5)
    # A curve at 1 everywhere has area 1; one dropping linearly from 1 to 0 over [0, 1]: 0.5.
    fractions = (0.25, 0.5, 0.75, 1.0)
    np.testing.assert_allclose(normalized_areas(np.ones((1, 4)), fractions, 1.0), [1.0])
    np.testing.assert_allclose(normalized_areas(np.array([[0.75, 0.5, 0.25, 0.0]]), fractions, 1.0), [0.5])


@pytest.mark.parametrize(
    ("node", "named"),
    [
        ({"fractions": [0.2, 0.1]}, "faithfulness.fractions"),
        ({"fractions": [0.0, 0.1]}, "faithfulness.fractions"),
        ({"replace": "noise"}, "faithfulness.replace"),
        ({"cascade": [0.5, 1.5]}, "faithfulness.cascade"),
        ({"images": -1}, "faithfulness.images"),
        ({"imgs": 3}, "unknown key(s) ['imgs']"),
    ],
)
def test_bad_settings_are_named(node, named) -> None:
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        FaithfulnessSettings.from_config(node)


def test_images_zero_turns_it_off_and_a_test_set_without_anomalies_says_so(trained) -> None:
    from omegaconf import OmegaConf

    from anomaly_attn.training.faithfulness_step import faithfulness_of_run

    module, _ = trained

    class Normals:
        records = [type("Record", (), {"label": 0, "path": "good.png"})()] * 3

    off = OmegaConf.create({"faithfulness": {"images": 0}})
    assert faithfulness_of_run(off, module.engine, Normals(), None) is None
    block = faithfulness_of_run(OmegaConf.create({}), module.engine, Normals(), None)
    assert block["skipped"] == "the test set has no anomalous image"


def test_the_recomputed_score_is_the_runs_image_score(trained) -> None:
    module, images = trained
    expected = module.engine.map_scores(module.engine.compute_maps(images)[0])["selected"]
    score = faithfulness.image_score(module.engine, images, len(images))
    torch.testing.assert_close(score, expected, rtol=0, atol=0)
