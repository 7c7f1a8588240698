"""Map selection on synthetic validation data: specs, candidates, fixed keys, the choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.scoring import spearman
from anomaly_attn.maps.selection import select_maps, spatial_layers
from anomaly_attn.maps.selection_result import SelectionSettings
from anomaly_attn.maps.specs import MapSpec, ScoreSpec, render, spec_from_map_config
from anomaly_attn.models import create_model
from tests.fixtures import planted_set


def test_spec_round_trip_label_and_family() -> None:
    spec = MapSpec("attention", "encoder.1", "mean_abs_cam", "residual", "zsum", 2.0, (0.1, 0.2, 0.3, 0.4))
    assert MapSpec.from_dict(spec.to_dict()) == spec
    assert spec.label == "mean_abs_cam@encoder.1[residual]+z(residual_l2) σ2"
    assert spec.family == "attention+residual"
    assert MapSpec("residual_l2", smoothing_sigma=1).family == "residual_l2"
    score = ScoreSpec(spec, "topk_mean", 2.0)
    assert ScoreSpec.from_dict(score.to_dict()) == score
    assert score.label.startswith("top2% of mean_abs_cam@encoder.1")


def test_bad_specs_and_settings_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match="valid: 'attention', 'feature_memory' or a control map"):
        MapSpec("residual_l3")
    with pytest.raises(ValueError, match="only attention maps are fused"):
        MapSpec("residual_l2", fusion="product")
    with pytest.raises(ValueError, match=r"selection.variants: unknown \['gradcamm'\]; valid: \["):
        SelectionSettings.from_config({"variants": ["gradcamm"]})
    with pytest.raises(ValueError, match=r"selection.layers: unknown \['encoder.99'\]"):
        SelectionSettings(layers=["encoder.99"]).validate(["encoder.0", "encoder.1"])
    with pytest.raises(ValueError, match="selection.map='best'"):
        SelectionSettings.from_config({"map": "best"})
    with pytest.raises(ValueError, match="map=residual_l2 is already a residual map"):
        spec_from_map_config({"variant": "residual_l2", "fusion": "product"}, "encoder.1")


def test_render_smooths_then_fuses_without_per_image_normalisation() -> None:
    attention = torch.rand(2, 1, 16, 16)
    residual = torch.rand(2, 1, 16, 16)
    bases = {("attention", "encoder.1", "mean_abs_cam", "residual"): attention, ("residual_l2",): residual}
    product = render(MapSpec("attention", "encoder.1", "mean_abs_cam", "residual", "product"), bases)
    torch.testing.assert_close(product, attention * residual)
    zsum = render(
        MapSpec("attention", "encoder.1", "mean_abs_cam", "residual", "zsum", 0.0, (1.0, 2.0, 3.0, 4.0)),
        bases,
    )
    torch.testing.assert_close(zsum, (attention - 1.0) / 2.0 + (residual - 3.0) / 4.0, atol=1e-5, rtol=1e-5)
    # Scaling one image's residual scales only that image's fused map: images stay comparable.
    scaled = {**bases, ("residual_l2",): residual * torch.tensor([1.0, 10.0]).view(2, 1, 1, 1)}
    scaled_product = render(MapSpec("attention", "encoder.1", "mean_abs_cam", "residual", "product"), scaled)
    torch.testing.assert_close(scaled_product[1], product[1] * 10)


def test_objective_and_spearman() -> None:
    assert objective_value({"pixel_auroc": 0.8, "pixel_aupro": 0.6}, "mean_auroc_aupro") == pytest.approx(0.7)
    assert spearman([(1, 2), (2, 3), (3, 5), (4, 4)]) == pytest.approx(0.8)
    assert math.isnan(spearman([(1, 2), (2, 3)]))


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("conv_ae", image_size=64, in_channels=1).eval()


@pytest.fixture(scope="module")
def engine(model: torch.nn.Module) -> MapEngine:
    """The untrained model's maps on uncentred images."""
    return MapEngine(model, 64, 1, {"variant": "mean_abs_cam"}, center_input=False)


def test_selection_finds_the_planted_squares_and_respects_fixed_keys(engine: MapEngine) -> None:
    images, masks, labels = planted_set()
    settings = SelectionSettings(
        variants=["mean_abs_cam", "layercam"],
        inputs=["residual"],
        fusions=["none", "product"],
        smoothing_sigmas=[0, 1],
        stage2_width=2,
    )
    layers = spatial_layers(engine.model, 64, 1)
    result = select_maps(engine, images, masks, labels, settings, {}, layers, batch_size=8)
    validation = {c.spec: c.validation for c in result.candidates}
    best = objective_value(validation[result.map], settings.objective)
    assert best == pytest.approx(
        max(objective_value(v, settings.objective) for v in validation.values()), abs=1e-3
    )
    # An untrained model's residual still marks a bright square: the chosen map finds it.
    assert validation[result.map]["pixel_auroc"] > 0.9
    assert {c.spec.family for c in result.candidates} >= {"attention", "attention+residual", "residual_l2"}
    summary = result.summary()
    assert summary["chosen"]["label"] == result.map.label
    assert summary["objective"] == "mean_auroc_aupro"
    assert len(summary["candidates"]) == len(result.candidates)
    assert set(summary["alpha_health"]) == set(layers)
    # A degenerate layer (conv output feeding an InstanceNorm) gets no alpha-based candidate.
    assert result.alpha_health["encoder.0"]["degenerate"]
    at_encoder_0 = [c.spec.variant for c in result.candidates if c.spec.layer == "encoder.0"]
    assert "mean_abs_cam" not in at_encoder_0

    fixed = select_maps(
        engine,
        images,
        masks,
        labels,
        settings,
        {"layer": "encoder.16", "fusion": "none"},
        layers,
        batch_size=8,
    )
    assert {c.spec.layer for c in fixed.candidates} == {"encoder.16"}  # no controls: a layer ablation
    assert fixed.map.layer == "encoder.16" and fixed.map.fusion == "none"
    assert fixed.score.map.layer == "encoder.16"


def test_a_fixed_degenerate_layer_keeps_its_variant_when_fixed(engine: MapEngine) -> None:
    images, masks, labels = planted_set()
    settings = SelectionSettings(
        variants=["mean_abs_cam", "layercam"],
        inputs=["residual"],
        fusions=["none"],
        smoothing_sigmas=[0],
        stage2_width=1,
    )
    free_variant = select_maps(
        engine,
        images,
        masks,
        labels,
        settings,
        {"layer": "encoder.0"},
        ["encoder.0"],
        batch_size=8,
    )
    assert {c.spec.variant for c in free_variant.candidates} == {"layercam"}
    assert any("degenerate" in note for note in free_variant.notes)
    fixed_variant = select_maps(
        engine,
        images,
        masks,
        labels,
        settings,
        {"layer": "encoder.0", "variant": "mean_abs_cam"},
        ["encoder.0"],
        batch_size=8,
    )
    assert fixed_variant.map.variant == "mean_abs_cam"


def test_the_prior_stays_unless_the_best_wins_almost_every_resample() -> None:
    from anomaly_attn.maps.prior_test import bootstrap_groups, bootstrap_win_rate

    labels = torch.tensor([0] * 10 + [1] * 10)
    groups = bootstrap_groups(labels)
    assert groups.tolist() == list(range(10)) * 2  # a clean image and its anomalous copy are drawn together
    assert bootstrap_groups(torch.tensor([0, 1, 0, 1])).tolist() == [0, 1, 2, 3]
    rng = np.random.default_rng(0)
    # Per-image "scores": the candidate beats the reference on 9 images of 10 and loses one by a lot.
    gain = np.r_[np.full(9, 0.01), -0.5, np.full(9, 0.01), -0.5]

    def score(weights: np.ndarray, name: str) -> float:
        return float((weights * gain).sum()) if name == "candidate" else 0.0

    rate = bootstrap_win_rate(score, "candidate", "reference", groups, 200, rng)
    assert 0.2 < rate < 0.5  # wins only when the bad image is left out: the prior stays at 95 %
    always = bootstrap_win_rate(
        lambda w, name: float(name == "candidate"), "candidate", "reference", groups, 50, rng
    )
    assert always == 1.0


def test_selection_records_the_prior_test(engine: MapEngine) -> None:
    images, masks, labels = planted_set()
    settings = SelectionSettings(
        variants=["layercam"], inputs=["residual"], fusions=["none"], smoothing_sigmas=[0, 2], stage2_width=1
    )
    result = select_maps(
        engine, images, masks, labels, settings, {}, ["encoder.1", "encoder.16"], batch_size=8
    )
    test = result.summary()["prior"].get("map")
    if test is not None:  # the best was another map: it replaced the residual only with >= 95 % wins
        assert test["prior"] == "residual_l2" and 0.0 <= test["win_rate"] <= 1.0
        assert test["kept_prior"] == (test["win_rate"] < 0.95)
        assert (result.map.label == "residual_l2") == test["kept_prior"]
    else:
        assert result.map == MapSpec("residual_l2")


def test_a_fixed_image_score_reduction_is_kept_when_the_prior_wins(engine: MapEngine) -> None:
    """evaluation.score=topk_mean fixed on the command line and a prior kept by the bootstrap test: the
    prior's score uses topk_mean, is one of the candidates, and the summary can be written (it raised
    StopIteration when the prior's score was 'max of residual_l2', outside the candidates)."""
    images, masks, labels = planted_set()
    settings = SelectionSettings(
        variants=["layercam"], inputs=["residual"], fusions=["none"], smoothing_sigmas=[0], stage2_width=1,
        confidence=1.0,
    )
    result = select_maps(
        engine, images, masks, labels, settings, {"score": "topk_mean"}, ["encoder.1"], batch_size=8
    )
    summary = result.summary()
    assert result.score.reduction == "topk_mean"
    test = summary["prior"].get("image_score")
    if test is not None:
        assert test["prior"].startswith("top1% of residual_l2")


def test_split_half_tests_the_image_score_on_images_it_was_not_chosen_on() -> None:
    """A candidate that is perfect on some validation images and random on the rest looks best on the
    whole set, and a bootstrap of that same set confirms it; split_half chooses it on its good half and
    tests it on the other, where it loses to the prior (the winner's curse ELPV showed)."""
    from anomaly_attn.maps.prior_test import PriorTest
    from anomaly_attn.maps.scoring import ValidationScorer
    from anomaly_attn.maps.selection import _select_image_score

    pairs = 40
    labels = torch.tensor([0] * pairs + [1] * pairs)
    scorer = ValidationScorer(torch.zeros(2 * pairs, 1, 4, 4), labels, 0.3)
    rng = np.random.default_rng(0)
    prior_scores = torch.tensor(rng.normal(size=2 * pairs) + 0.3 * labels.numpy())  # AUROC about 0.6
    prior = ScoreSpec(MapSpec("residual_l2"), "max")
    overfit = ScoreSpec(MapSpec("residual_ssim", smoothing_sigma=1.0), "max")
    records = {}
    for confirm in ("same", "split_half"):
        test = PriorTest(SelectionSettings(image_score_confirm=confirm, bootstrap=200), labels)
        # Perfect on the half split_half chooses on, random on the other: AUROC about 0.875 on all images.
        half = PriorTest(SelectionSettings(image_score_confirm="split_half"), labels).choose_units
        on_half = np.isin(test.groups, half)
        noise = rng.normal(size=2 * pairs)
        fitted = torch.tensor(np.where(on_half, 20.0 * labels.numpy() - 10.0 + 0.01 * noise, noise))
        values = {prior: prior_scores, overfit: fitted}
        entries, best = _select_image_score(values, scorer, prior.map, test.choice_weights())
        assert best == overfit  # it looks best either way
        chosen = test.choose("image_score", lambda w, s, values=values: scorer.image(values[s], w), best,
                             prior, image_score=True)
        records[confirm] = (chosen, test.records["image_score"], entries)
    same_choice, same_record, _ = records["same"]
    split_choice, split_record, split_entries = records["split_half"]
    assert same_choice == overfit and same_record["win_rate"] >= 0.95  # the curse: confirmed on itself
    assert split_choice == prior and split_record["win_rate"] < 0.5 and split_record["kept_prior"]
    assert "not chosen on" in split_record["tested_on"]
    assert split_entries[overfit.label]["validation"]["image_auroc_choice_half"] == 1.0


def test_image_score_confirm_is_checked() -> None:
    with pytest.raises(ValueError, match="selection.image_score_confirm='halves'; valid: same, split_half"):
        SelectionSettings.from_config({"image_score_confirm": "halves"})


def _specialist_set(pairs: int = 150):
    """Validation pairs from generators a, b, c in turn; the prior's score reaches AUROC about 0.6 on
    each, the specialist's is perfect on a and c's anomalies and ranks b's below most clean images."""
    from anomaly_attn.maps.scoring import ValidationScorer

    labels = torch.tensor([0] * pairs + [1] * pairs)
    kinds = ["a", "b", "c"] * (pairs // 3)
    generators = ["none"] * pairs + kinds
    rng = np.random.default_rng(0)
    prior_scores = rng.normal(size=2 * pairs) + 0.4 * labels.numpy()
    specialist = np.r_[rng.uniform(0, 1, pairs), [5.0 if k != "b" else rng.uniform(0, 0.3) for k in kinds]]
    prior = ScoreSpec(MapSpec("residual_l2"), "max")
    other = ScoreSpec(MapSpec("residual_ssim", smoothing_sigma=1.0), "max")
    values = {prior: torch.tensor(prior_scores), other: torch.tensor(specialist)}
    scorer = ValidationScorer(torch.zeros(2 * pairs, 1, 4, 4), labels, 0.3)
    return labels, generators, values, prior, other, scorer


def test_per_generator_keeps_the_prior_when_the_best_loses_on_one_kind_of_defect() -> None:
    from anomaly_attn.maps.prior_test import PriorTest, confirmed

    labels, generators, values, prior, other, scorer = _specialist_set()
    assert scorer.image(values[other]) > scorer.image(values[prior])  # best on the whole set
    chosen = {}
    for rule in ("same", "per_generator"):
        test = PriorTest(SelectionSettings(image_score_confirm=rule, bootstrap=200), labels, generators)
        chosen[rule] = (confirmed(values, scorer, other, prior, test), test.records["image_score"])
    assert chosen["same"][0] == other and "per_generator" not in chosen["same"][1]
    choice, record = chosen["per_generator"]
    assert choice == prior and record["kept_prior"] and record["win_rate"] >= 0.95  # kept for b alone
    assert record["per_generator"]["b"]["best"] < 0.3 < record["per_generator"]["b"]["prior"]
    assert record["per_generator"]["a"]["best"] == 1.0


def test_the_transfer_estimate_scores_each_rule_on_a_generator_it_did_not_choose_on() -> None:
    from anomaly_attn.maps.prior_test import image_score_transfer
    from anomaly_attn.metrics.ranked import weighted_auroc

    labels, generators, values, prior, other, scorer = _specialist_set()
    settings = SelectionSettings()
    transfer = image_score_transfer(values, scorer, prior.map, prior, settings, labels, generators)
    assert transfer["prior"] == prior.label
    assert set(transfer["rules"]) == {"same", "split_half", "per_generator"}
    same = transfer["rules"]["same"]["folds"]
    # Chosen on a and c, where it is perfect, the specialist fails on b: the held-out b pairs score it
    # below the prior by their AUROC difference.
    pairs = len(labels) // 2
    held_out = np.r_[np.asarray(generators[pairs:]) == "b", np.asarray(generators[pairs:]) == "b"]
    expected = weighted_auroc(values[other].numpy()[held_out], labels.numpy()[held_out]) - weighted_auroc(
        values[prior].numpy()[held_out], labels.numpy()[held_out]
    )
    assert same["b"]["chosen"] == other.label and expected < -0.3
    assert same["b"]["gain"] == pytest.approx(expected)
    # Chosen where b's anomalies are half the set, the specialist is not better: the prior stays, gain 0.
    assert same["a"] == {"chosen": prior.label, "gain": 0.0} and same["c"]["gain"] == 0.0
    assert transfer["rules"]["same"]["gain_min"] == same["b"]["gain"]
    assert transfer["rules"]["same"]["gain_mean"] == pytest.approx(same["b"]["gain"] / 3)
    # One generator, unpaired images or no prior: no estimate.
    one_kind = ["none"] * pairs + ["a"] * pairs
    assert image_score_transfer(values, scorer, prior.map, prior, settings, labels, one_kind) == {}
    assert image_score_transfer(values, scorer, prior.map, None, settings, labels, generators) == {}
