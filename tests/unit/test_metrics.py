"""Metrics against scikit-learn, hand computations and a sort-based MVTec AUPRO written from the definition.

The adversarial cases are those of the issue that retired the equal-width histogram: one outlier at 1e6,
log-normal maps (sigma 6), scores spanning 1e-30...1e30, ties and constant maps. Every pixel metric, of
the array functions and of the streaming Metric (exact part, bit-pattern cells, merges, DDP), must match
the references within 1e-6 or within the error bound it reports.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as skimage_label
from sklearn.metrics import precision_recall_curve, roc_auc_score

from anomaly_attn.metrics import (
    AnomalyImageMetrics,
    AnomalyPixelMetrics,
    aupro,
    f1_max,
    f1_max_threshold,
    image_auroc,
    iou,
    pixel_auroc,
    pixel_metrics,
    top_region,
)
from anomaly_attn.metrics.exact_sort import exact_rows
from anomaly_attn.metrics.regions import defect_region_weights
from anomaly_attn.metrics.score_rows import ScoreRows, rows_aupro, rows_iou

TOLERANCE = 1e-6


def exact_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Slow reference straight from the MVTec AD definition: every distinct score is a threshold; regions
    are skimage's 8-connected components; each region's overlap is counted from its own sorted scores."""
    maps = maps.astype(np.float64)
    normal_scores = np.sort(maps[masks == 0])
    region_scores = []
    for image_map, image_mask in zip(maps, masks, strict=True):
        region_labels = skimage_label(image_mask.astype(int), connectivity=2)
        region_scores += [np.sort(image_map[region_labels == r]) for r in range(1, region_labels.max() + 1)]
    thresholds = np.unique(maps)[::-1]

    def fraction_at_or_above(sorted_scores: np.ndarray) -> np.ndarray:
        return 1.0 - np.searchsorted(sorted_scores, thresholds, side="left") / len(sorted_scores)

    fpr = np.concatenate(([0.0], fraction_at_or_above(normal_scores)))
    pro = np.concatenate(([0.0], np.mean([fraction_at_or_above(s) for s in region_scores], axis=0)))
    kept = fpr <= fpr_limit
    fpr_kept, pro_kept = fpr[kept], pro[kept]
    if fpr_kept[-1] < fpr_limit:
        first_beyond = int(np.argmax(~kept))
        pro_at_limit = np.interp(
            fpr_limit, fpr[first_beyond - 1 : first_beyond + 1], pro[first_beyond - 1 : first_beyond + 1]
        )
        fpr_kept, pro_kept = np.append(fpr_kept, fpr_limit), np.append(pro_kept, pro_at_limit)
    return float(np.sum(np.diff(fpr_kept) * (pro_kept[1:] + pro_kept[:-1]) / 2) / fpr_limit)


def sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels.ravel(), scores.ravel())
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(2 * precision * recall / (precision + recall)))


def direct_iou(maps: np.ndarray, masks: np.ndarray, threshold: float) -> float:
    predicted, defect = maps >= threshold, masks == 1
    return np.count_nonzero(predicted & defect) / np.count_nonzero(predicted | defect)


def references(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float]:
    return {
        "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
        "pixel_aupro": exact_aupro(maps, masks, fpr_limit),
        "pixel_f1_max": sklearn_f1_max(masks, maps),
    }


def blob_maps_and_masks(n_maps: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth float32 maps; every other image has 1-3 blobs (some touching) whose map is raised."""
    rng = np.random.default_rng(seed)
    maps = ndimage.gaussian_filter(rng.standard_normal((n_maps, size, size)), sigma=(0, 2, 2))
    masks = np.zeros((n_maps, size, size), dtype=np.float32)
    for image_index in range(1, n_maps, 2):
        blob_noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 12)
        masks[image_index] = blob_noise > np.quantile(blob_noise, 0.93)
        maps[image_index] += 0.15 * rng.uniform(0.5, 2.0) * ndimage.gaussian_filter(masks[image_index], 2)
    return maps.astype(np.float32), masks


def adversarial_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The issue's 20 maps of 64² in [0, 1.3], and what broke the histogram: outlier, heavy tails, ties."""
    maps, masks = blob_maps_and_masks(n_maps=20, size=64, seed=0)
    clean = ((maps - maps.min()) / (maps.max() - maps.min()) * 1.3).astype(np.float32)
    rng = np.random.default_rng(1)
    if name == "clean":
        return clean, masks
    if name == "outlier_1e6":
        clean[3, 5, 7] = 1e6  # a normal pixel of a normal image
        return clean, masks
    if name == "defect_outlier_1e6":
        clean[1][masks[1] == 1] = np.linspace(0, 1e6, int(masks[1].sum()), dtype=np.float32)
        return clean, masks
    if name == "lognormal_sigma6":
        return np.exp(6 * rng.standard_normal(clean.shape) + 2 * masks).astype(np.float32), masks
    if name == "span_1e-30_1e30":
        exponents = rng.uniform(-30, 30, clean.shape) + 3 * masks
        return (10.0**exponents * rng.choice([-1, 1], clean.shape)).astype(np.float32), masks
    if name == "ties":
        return np.round(clean * 8) / 8, masks
    if name == "constant":
        return np.full_like(clean, 0.5), masks
    if name == "float64_signed":
        return rng.standard_normal(clean.shape) + masks, masks
    raise ValueError(name)


ADVERSARIAL_CASES = [
    "clean", "outlier_1e6", "defect_outlier_1e6", "lognormal_sigma6", "span_1e-30_1e30", "ties", "constant",
    "float64_signed",
]


@pytest.fixture(scope="module")
def blob_data() -> tuple[np.ndarray, np.ndarray]:
    return blob_maps_and_masks(n_maps=12, size=64, seed=0)


def _stream(metric: AnomalyPixelMetrics, maps: np.ndarray, masks: np.ndarray, num_batches: int) -> None:
    for batch_maps, batch_masks in zip(
        np.array_split(maps, num_batches), np.array_split(masks, num_batches), strict=True
    ):
        metric.update(torch.from_numpy(batch_maps)[:, None], torch.from_numpy(batch_masks)[:, None])


def _assert_within(results: dict, expected: dict[str, float], tolerance: float) -> None:
    for name, value in expected.items():
        assert float(results[name]) == pytest.approx(value, abs=tolerance), name


# ----------------------------------------------------------------------------------- image level
def test_image_auroc_and_f1_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 8, 200) / 8 + 0.2 * labels  # heavy ties
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    best, threshold = f1_max_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
    assert best == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    assert threshold in scores
    predicted = scores >= threshold
    true_positives = np.sum(predicted & (labels == 1))
    assert 2 * true_positives / (predicted.sum() + labels.sum()) == pytest.approx(best, abs=1e-12)


def test_image_metric_over_batches_equals_functional() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 90)
    scores = rng.normal(size=90) + labels
    metric = AnomalyImageMetrics()
    for batch in np.array_split(np.arange(90), 7):
        metric.update(torch.from_numpy(scores[batch]), torch.from_numpy(labels[batch]))
    results = metric.compute()
    assert float(results["image_auroc"]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert float(results["image_f1_max"]) == pytest.approx(f1_max(scores, labels), abs=1e-12)


def test_image_auroc_with_one_class_warns_and_is_nan() -> None:
    with pytest.warns(RuntimeWarning, match="image AUROC is undefined"):
        assert np.isnan(image_auroc([0.1, 0.5], [0, 0]))


# ----------------------------------------------------------------------------------- adversarial cases
@pytest.mark.parametrize("case", ADVERSARIAL_CASES)
def test_array_functions_match_the_references_on_adversarial_maps(case: str) -> None:
    maps, masks = adversarial_case(case)
    expected = references(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the values are exact
        results = pixel_metrics(maps, masks)
        separate = {"pixel_auroc": pixel_auroc(maps, masks), "pixel_aupro": aupro(maps, masks),
                    "pixel_f1_max": f1_max(maps, masks)}
    assert results["error_bound"] == 0.0
    _assert_within(results, expected, TOLERANCE)
    _assert_within(separate, expected, TOLERANCE)
    threshold = results["pixel_f1_threshold"]
    assert iou(maps, masks, threshold) == pytest.approx(direct_iou(maps, masks, threshold), abs=1e-12)


@pytest.mark.parametrize("case", ADVERSARIAL_CASES)
def test_streaming_metric_matches_the_references_on_adversarial_maps(case: str) -> None:
    maps, masks = adversarial_case(case)
    expected = references(maps, masks)
    threshold = float(np.quantile(maps, 0.97))
    metric = AnomalyPixelMetrics(iou_threshold=threshold)
    _stream(metric, maps, masks, num_batches=7)
    results = metric.compute()
    assert float(results["error_bound"]) == 0.0
    _assert_within(results, {**expected, "pixel_iou": direct_iou(maps, masks, threshold)}, TOLERANCE)
    for quantile in (0.5, 0.9, 0.99):
        other = float(np.quantile(maps, quantile))
        assert float(metric.iou(other)) == pytest.approx(direct_iou(maps, masks, other), abs=TOLERANCE)


@pytest.mark.parametrize("case", ADVERSARIAL_CASES)
def test_bit_pattern_cells_stay_within_their_error_bound(case: str) -> None:
    # exact_pixels=0 sends every pixel to the cells: the default 2^20 cells, and 64 cells that force the
    # coarsest widths. Every metric and every IoU must stay within the bound the metric reports; cells of
    # a single score (ties, constant maps) are exact.
    maps, masks = adversarial_case(case)
    expected = references(maps, masks)
    threshold = float(np.quantile(maps, 0.95))
    for num_bins in (2**20, 64):
        metric = AnomalyPixelMetrics(exact_pixels=0, num_bins=num_bins, iou_threshold=threshold)
        _stream(metric, maps, masks, num_batches=5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # bounds above 1e-4 warn
            results = metric.compute()
            bound = float(results["error_bound"])
            if num_bins == 2**20:
                assert bound == 0.0 if case in ("ties", "constant") else bound < 1e-5
            for name, value in expected.items():
                assert abs(float(results[name]) - value) <= bound + 1e-12, name
            assert float(results["pixel_iou"]) == pytest.approx(direct_iou(maps, masks, threshold), abs=1e-12)
            for quantile in (0.5, 0.9, 0.99):
                other = float(np.quantile(maps, quantile))
                value, iou_bound = metric.iou(other, return_bound=True)
                assert abs(float(value) - direct_iou(maps, masks, other)) <= float(iou_bound) + 1e-12


def test_one_outlier_no_longer_moves_the_streaming_iou() -> None:
    # The issue: 0.160 became 0.090 with one pixel at 1e3 under equal-width bins.
    maps, masks = adversarial_case("clean")
    maps[0, 0, 0] = 1e3
    threshold = float(np.quantile(maps, 0.95))
    for exact_pixels in (2**24, 0):
        metric = AnomalyPixelMetrics(exact_pixels=exact_pixels)
        _stream(metric, maps, masks, num_batches=4)
        assert float(metric.iou(threshold)) == pytest.approx(direct_iou(maps, masks, threshold), abs=1e-12)


def test_hidden_style_random_cases_match_the_references() -> None:
    # Random shapes, batchings and score distributions, including integer ties, zero-heavy and signed
    # float64 maps; functional and streaming (exact part and cells) must agree with the references.
    distributions = {
        "normal": lambda rng, shape: rng.standard_normal(shape).astype(np.float32),
        "uniform": lambda rng, shape: rng.random(shape).astype(np.float32),
        "exponential": lambda rng, shape: rng.exponential(1.0, shape).astype(np.float32),
        "lognormal": lambda rng, shape: rng.lognormal(0.0, 4.0, shape).astype(np.float32),
        "integers": lambda rng, shape: rng.integers(0, 5, shape).astype(np.float32),
        "zeros_and_spikes": lambda rng, shape: np.where(rng.random(shape) < 0.1, rng.random(shape), 0.0),
        "float64": lambda rng, shape: rng.standard_normal(shape) * 1e3,
    }
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        shape = (int(rng.integers(3, 9)), int(rng.integers(5, 40)), int(rng.integers(5, 40)))
        masks = np.zeros(shape, dtype=np.uint8)
        for image_index in range(1, shape[0], 2):
            row, column = rng.integers(0, shape[1]), rng.integers(0, shape[2])
            masks[image_index, row : row + rng.integers(1, 8), column : column + rng.integers(1, 8)] = 1
        for draw in distributions.values():
            maps = draw(rng, shape) + masks * rng.uniform(0.0, 2.0)
            expected = references(maps, masks)
            _assert_within(pixel_metrics(maps, masks), expected, TOLERANCE)
            num_batches = int(rng.integers(1, shape[0] + 1))
            exact = AnomalyPixelMetrics()
            _stream(exact, maps, masks, num_batches)
            _assert_within(exact.compute(), expected, TOLERANCE)
            cells = AnomalyPixelMetrics(exact_pixels=0)
            _stream(cells, maps, masks, num_batches)
            results = cells.compute()
            _assert_within(results, expected, float(results["error_bound"]) + 1e-12)


def test_large_inputs_take_the_sampled_paths_and_stay_exact() -> None:
    # 8 maps of 256² (524 k pixels) pass _SMALL_INPUT_PIXELS: aupro and f1_max sort only a top region
    # and must still equal the fully sorted values.
    maps, masks = blob_maps_and_masks(n_maps=8, size=256, seed=3)
    assert maps.size > top_region._SMALL_INPUT_PIXELS
    full = pixel_metrics(maps, masks)
    assert full["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_auroc(maps, masks) == full["pixel_auroc"]
    assert aupro(maps, masks) == pytest.approx(full["pixel_aupro"], abs=1e-12)
    for fpr_limit in (0.05, 1.0):
        exact_value = pixel_metrics(maps, masks, fpr_limit)["pixel_aupro"]
        assert aupro(maps, masks, fpr_limit) == pytest.approx(exact_value, abs=1e-12)
    best, threshold = f1_max_threshold(maps, masks)
    assert best == pytest.approx(full["pixel_f1_max"], abs=1e-12)
    assert threshold == full["pixel_f1_threshold"]


def test_regions_too_small_for_an_exact_answer_are_detected_and_widened() -> None:
    # Uninformative scores: F1-max sits near the bottom of the ranking and AUPRO's FPR limit is 1, so
    # no top region suffices; the proposals must be rejected (not trusted) and the result stay exact.
    rng = np.random.default_rng(7)
    maps = rng.random((6, 256, 256)).astype(np.float32)
    masks = (rng.random(maps.shape) < 0.3).astype(np.float32)
    pixels = top_region._Pixels.from_maps(maps, masks)
    high_score = float(np.quantile(maps, 0.9))
    assert top_region._f1_in_region(pixels, high_score, int(masks.sum())) is None
    assert f1_max(maps, masks) == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-12)
    full = pixel_metrics(maps, masks, fpr_limit=1.0)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(full["pixel_aupro"], abs=1e-12)
    rows = exact_rows(pixels.scores, pixels.defect, *pixels.regions, region_lower=high_score)
    assert rows_aupro(rows, 0.3)[1] > 0  # the part below high_score is left open: a bound


def test_f1_max_of_one_dimensional_scores_equals_the_maps_and_sklearn() -> None:
    maps, masks = blob_maps_and_masks(n_maps=8, size=256, seed=4)
    on_maps = f1_max_threshold(maps, masks)
    on_vector = f1_max_threshold(maps.ravel(), masks.ravel())
    assert on_vector == on_maps
    small_maps, small_masks = maps[1:3], masks[1:3]
    assert f1_max(small_maps.ravel(), small_masks.ravel()) == pytest.approx(
        sklearn_f1_max(small_masks, small_maps), abs=1e-12
    )


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_are_an_error_naming_the_image(bad_value: float) -> None:
    maps, masks = adversarial_case("clean")
    maps[13, 4, 4] = bad_value
    for function in (pixel_auroc, aupro, f1_max, pixel_metrics):
        with pytest.raises(ValueError, match=r"at 1 of 20 images \(index 13: "):
            function(maps, masks)
    image_scores = np.linspace(0.0, 1.0, 20)
    image_scores[13] = bad_value
    with pytest.raises(ValueError, match=r"at 1 of 20 images \(index 13: "):
        f1_max(image_scores, np.arange(20) % 2)
    metric = AnomalyPixelMetrics()
    with pytest.raises(ValueError, match=r"at 1 of 8 images \(index 5: "):
        metric.update(torch.from_numpy(maps[8:16]), torch.from_numpy(masks[8:16]))


def test_finite_scores_near_the_float_maximum_are_accepted_though_their_sum_overflows() -> None:
    # The finiteness check sums the scores first; a sum of huge finite values is inf, which must send it
    # to the per-image check (all finite: no error), not raise.
    maps, masks = adversarial_case("clean")
    maps = (maps / maps.max() * 3e38).astype(np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.add.reduce(maps, axis=None)) and np.isfinite(maps).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks to the user, an overflow warning included
        pixel_auroc(maps, masks)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert f1_max(maps, masks) == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-12)


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5])
def test_fpr_limit_outside_0_1_is_rejected(fpr_limit: float) -> None:
    maps, masks = np.random.default_rng(6).random((1, 4, 4)), np.eye(4)[None]
    with pytest.raises(ValueError, match="fpr_limit must be in"):
        aupro(maps, masks, fpr_limit=fpr_limit)
    with pytest.raises(ValueError, match="fpr_limit must be in"):
        AnomalyPixelMetrics(fpr_limit=fpr_limit)


def test_non_binary_masks_and_shape_mismatch_are_rejected() -> None:
    maps = np.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="only 0 and 1.*PNG"):
        pixel_auroc(maps, np.full((1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"\(1, 4, 4\) and masks \(1, 5, 5\) differ"):
        pixel_auroc(maps, np.zeros((1, 5, 5)))


def test_empty_masks_warn_and_give_nan() -> None:
    maps, masks = np.random.default_rng(5).random((2, 8, 8)), np.zeros((2, 8, 8))
    with pytest.warns(RuntimeWarning, match="no defect region"):
        assert np.isnan(aupro(maps, masks))
    with pytest.warns(RuntimeWarning, match="pixel AUROC is undefined"):
        assert np.isnan(pixel_auroc(maps, masks))
    with pytest.warns(RuntimeWarning, match="F1-max is undefined"):
        assert np.isnan(f1_max(maps, masks))


def test_retired_binning_arguments_warn_and_change_nothing(blob_data) -> None:
    maps, masks = blob_data
    with pytest.warns(DeprecationWarning, match="num_bins is ignored"):
        assert pixel_auroc(maps, masks, num_bins=1024) == pixel_auroc(maps, masks)
    with pytest.warns(DeprecationWarning, match="score_range is ignored"):
        AnomalyPixelMetrics(score_range=(0.0, 1.0))


# ----------------------------------------------------------------------------------- hand computations
def test_pixel_auroc_matches_sklearn_on_tied_scores_exactly() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5, 1, 16, 16)) < 0.2
    maps = (rng.integers(0, 20, masks.shape) + 4 * masks) / 20  # 24 distinct values, many ties
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(torch.from_numpy(maps).float(), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_exact_reference_on_random_blobs(blob_data, fpr_limit: float) -> None:
    maps, masks = blob_data
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(
        exact_aupro(maps, masks, fpr_limit), abs=1e-12
    )


def test_aupro_equals_hand_computation_on_two_4x4_images() -> None:
    # Image A has two regions of 2 pixels: R1 = {(0,0), (0,1)}, R2 = {(2,3), (3,3)}; image B is normal.
    # Normal pixels: 12 in A + 16 in B = 28. Scores: R1 = 0.9, 0.5; R2 = 0.8, 0.0; one normal pixel of A
    # at 0.7, one of B at 0.6, every other pixel 0.0. Thresholds from the top, points (FPR, PRO):
    #   start (0, 0); t=0.9 (0, 1/4); t=0.8 (0, 1/2); t=0.7 (1/28, 1/2); t=0.6 (2/28, 1/2);
    #   t=0.5 (2/28, 3/4); t=0.0 (1, 1).
    # FPR 0.3 falls on the last segment: PRO(0.3) = 3/4 + 1/4 * (0.3 - 2/28) / (1 - 2/28) = 0.811538...
    # Area = 1/2 * 2/28 (flat at 1/2) + (3/4 + PRO(0.3)) / 2 * (0.3 - 2/28) = 0.214176..., / 0.3 = 0.713919...
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    masks = np.zeros((2, 4, 4), dtype=np.uint8)
    masks[0, 0, 0:2] = 1
    masks[0, 2:4, 3] = 1
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 2, 3], maps[0, 3, 3] = 0.9, 0.5, 0.8, 0.0
    maps[0, 1, 1], maps[1, 2, 2] = 0.7, 0.6
    pro_at_limit = 3 / 4 + 1 / 4 * (0.3 - 2 / 28) / (1 - 2 / 28)
    expected = (1 / 2 * 2 / 28 + (3 / 4 + pro_at_limit) / 2 * (0.3 - 2 / 28)) / 0.3
    assert expected == pytest.approx(0.713919, abs=1e-6)
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(expected, abs=1e-12)
    assert exact_aupro(maps, masks, 0.3) == pytest.approx(expected, abs=1e-12)
    metric = AnomalyPixelMetrics(exact_pixels=0)  # the cells (one score each here) give the same
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert float(metric.compute()["pixel_aupro"]) == pytest.approx(expected, abs=1e-12)


def test_diagonal_neighbours_form_one_region() -> None:
    # Pixels (0,0), (1,1), (1,2): one 8-connected region of 3 (4-connectivity would give {(0,0)} and
    # {(1,1),(1,2)}). Only (0,0) scores above the normal pixels' 0, so PRO jumps to 1/3 at FPR 0 (it would
    # be 1/2 with two regions), then rises linearly to 1 at FPR 1: AUPRO_0.3 = (1/3 + 1/3 + 2/3*0.3) / 2.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps = np.zeros((1, 5, 5), dtype=np.float32)
    maps[0, 0, 0] = 1.0
    weights, num_regions = defect_region_weights(masks)
    assert num_regions == 1
    np.testing.assert_allclose(weights, [1 / 3] * 3)
    assert aupro(maps, masks) == pytest.approx((2 / 3 + 2 / 3 * 0.3) / 2, abs=1e-12)


def test_f1_max_on_maps_matches_sklearn_and_its_threshold_achieves_it() -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((4, 8, 8)) < 0.3
    maps = (rng.integers(0, 10, masks.shape) + 3 * masks).astype(np.float32)
    best, threshold = f1_max_threshold(maps, masks)
    assert best == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-12)
    predicted = maps >= threshold
    assert 2 * np.sum(predicted & masks) / (predicted.sum() + masks.sum()) == pytest.approx(best, abs=1e-12)


def test_iou_equals_hand_computation() -> None:
    # Map >= 0.5 selects (0,0), (0,1), (1,0); the mask is (0,1), (1,0), (1,1) in image 0 and (0,0) in
    # image 1 (scored 0.2). Intersection {(0,1), (1,0)} = 2; union 3 + 4 - 2 = 5 -> 0.4.
    maps = np.array([[[0.9, 0.6], [0.5, 0.1]], [[0.2, 0.0], [0.0, 0.0]]])
    masks = np.array([[[0, 1], [1, 1]], [[1, 0], [0, 0]]])
    assert iou(maps, masks, threshold=0.5) == pytest.approx(0.4)
    for exact_pixels in (2**24, 0):
        metric = AnomalyPixelMetrics(iou_threshold=0.5, exact_pixels=exact_pixels)
        metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
        assert float(metric.compute()["pixel_iou"]) == pytest.approx(0.4)
        assert float(metric.iou(0.5)) == pytest.approx(0.4)
        assert float(metric.iou(0.55)) == pytest.approx(1 / 5)  # (0,0), (0,1) predicted: 1 of 5


def test_rows_iou_bound_spans_every_split_of_the_cut_cell() -> None:
    # One inexact row with 2 defect and 3 normal pixels, cut by the threshold; 1 defect above it.
    rows = ScoreRows(
        normals_above=np.array([0.0, 0.0]), normals=np.array([0.0, 3.0]), defects=np.array([1.0, 2.0]),
        overlap_weights=np.zeros(2), exact=np.array([True, False]), lower=np.array([2.0, 0.0]),
        upper=np.array([2.0, 1.0]), num_normal=3, num_defect=3, num_regions=1,
    )
    value, bound = rows_iou(rows, 0.5)
    assert value == pytest.approx(1 / 3)
    assert bound == pytest.approx(max(1 / 3 - 1 / 6, 3 / 3 - 1 / 3))


# ----------------------------------------------------------------------------------- streaming
def test_streaming_state_size_is_bounded_by_num_bins(blob_data) -> None:
    maps, masks = blob_data
    metric = AnomalyPixelMetrics(num_bins=4096, exact_pixels=10_000)

    def state_bytes() -> int:
        tensors = [tensor for value in metric.metric_state.values()
                   for tensor in (value if isinstance(value, list) else [value])]
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors)

    _stream(metric, maps[:2], masks[:2], num_batches=2)
    assert state_bytes() <= 10_000 * 8 + 100  # the scores are kept exactly so far
    sizes = []
    for _ in range(3):
        _stream(metric, maps, masks, num_batches=12)
        sizes.append(state_bytes())
    assert max(sizes) <= (4096 + 24 * 64**2) * 32 + 200  # cells, plus at most one map's cells pending


def test_merging_metrics_equals_one_metric_over_all_batches(blob_data) -> None:
    # merge_state concatenates states (what the DDP sync does): kept scores with kept scores (exact), cells
    # with cells (fine ones, and coarse ones of different widths), and kept scores with coarse cells.
    maps, masks = blob_data
    maps = maps.copy()
    maps[6:] *= 1e4  # the second half has 10^4 times wider scores: coarser cells
    expected = references(maps, masks)
    cases = [  # (exact_pixels, num_bins) of both halves, and whether the merge stays exact
        ((2**24, 2**20), (2**24, 2**20), True),
        ((0, 2**20), (0, 2**20), False),
        ((0, 512), (0, 128), False),
        ((2**24, 2**20), (0, 128), False),
    ]
    for (first_exact, first_bins), (second_exact, second_bins), stays_exact in cases:
        first = AnomalyPixelMetrics(exact_pixels=first_exact, num_bins=first_bins)
        second = AnomalyPixelMetrics(exact_pixels=second_exact, num_bins=second_bins)
        _stream(first, maps[:6], masks[:6], num_batches=2)
        _stream(second, maps[6:], masks[6:], num_batches=2)
        first.merge_state(second)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = first.compute()
        bound = float(results["error_bound"])
        assert (bound == 0.0) == stays_exact
        for name, value in expected.items():
            assert abs(float(results[name]) - value) <= bound + 1e-12, name


def test_forward_returns_the_batch_value_and_accumulates(blob_data) -> None:
    maps, masks = blob_data
    metric = AnomalyPixelMetrics()
    metric(torch.from_numpy(maps[:6]), torch.from_numpy(masks[:6]))
    batch_value = metric(torch.from_numpy(maps[6:]), torch.from_numpy(masks[6:]))
    _assert_within(batch_value, references(maps[6:], masks[6:]), TOLERANCE)
    _assert_within(metric.compute(), references(maps, masks), TOLERANCE)


def _ddp_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    maps, masks = blob_maps_and_masks(n_maps=12, size=64, seed=0)
    maps[6:] *= 10  # rank 1 sees a 10x wider score range than rank 0
    own_images = slice(0, 6) if rank == 0 else slice(6, 12)
    results = {}
    # Kept scores on both ranks; kept scores on rank 0 and cells on rank 1; a metric only rank 0 feeds.
    for name, exact_pixels in (("exact", 2**24), ("mixed", 2**24 if rank == 0 else 0)):
        metric = AnomalyPixelMetrics(exact_pixels=exact_pixels)
        _stream(metric, maps[own_images], masks[own_images], num_batches=2)
        results[name] = {key: float(value) for key, value in metric.compute().items()}
        results[name]["iou"] = float(metric.iou(0.2))
    one_sided = AnomalyPixelMetrics()
    if rank == 0:
        _stream(one_sided, maps, masks, num_batches=3)
    results["one_sided"] = {key: float(value) for key, value in one_sided.compute().items()}
    if rank == 0:
        torch.save(results, result_path)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch (~30 s on 2 cores); fork deadlocks after torch ran
def test_ddp_sync_of_two_processes_equals_one_process(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result_path = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(2, port, result_path), nprocs=2, join=True)
    maps, masks = blob_maps_and_masks(n_maps=12, size=64, seed=0)
    maps[6:] *= 10
    expected = {**references(maps, masks), "iou": direct_iou(maps, masks, 0.2)}
    results = torch.load(result_path)
    for name in ("exact", "one_sided"):
        assert results[name]["error_bound"] == 0.0, name
    _assert_within(results["exact"], expected, TOLERANCE)
    _assert_within(results["one_sided"], references(maps, masks), TOLERANCE)
    _assert_within(results["mixed"], references(maps, masks), results["mixed"]["error_bound"] + 1e-12)
    assert results["mixed"]["iou"] == pytest.approx(expected["iou"], abs=1e-3)
