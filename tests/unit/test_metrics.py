"""Metrics against sklearn, hand computations and an exact sort-based AUPRO written from the definition."""

from __future__ import annotations

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
)
from anomaly_attn.metrics.functional import defect_region_weights


def exact_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float) -> float:
    """Slow reference straight from the MVTec AD definition: every distinct score is a threshold; regions
    are skimage's 8-connected components; each region's overlap is counted from its own sorted scores."""
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


@pytest.fixture(scope="module")
def blob_data() -> tuple[np.ndarray, np.ndarray]:
    return blob_maps_and_masks(n_maps=12, size=64, seed=0)


# ----------------------------------------------------------------------------------- image level
def test_image_auroc_and_f1_match_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 8, 200) / 8 + 0.2 * labels  # heavy ties
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    best, threshold = f1_max_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
    assert best == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
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


# ----------------------------------------------------------------------------------- pixel level
def test_pixel_auroc_matches_sklearn_on_tied_scores_exactly() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((5, 1, 16, 16)) < 0.2
    maps = (rng.integers(0, 20, masks.shape) + 4 * masks) / 20  # 24 distinct values, many ties
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(torch.from_numpy(maps).float(), torch.from_numpy(masks)) == pytest.approx(
        expected, abs=1e-12
    )


def test_binned_pixel_metrics_are_within_1e4_of_exact_on_smooth_maps(blob_data) -> None:
    maps, masks = blob_data
    results = pixel_metrics(maps, masks)
    assert results["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert results["pixel_aupro"] == pytest.approx(exact_aupro(maps, masks, 0.3), abs=1e-4)
    assert results["pixel_f1_max"] == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-4)
    # The single-metric functions take the same pass.
    assert pixel_auroc(maps, masks) == results["pixel_auroc"]
    assert aupro(maps, masks) == results["pixel_aupro"]
    assert f1_max(maps, masks) == results["pixel_f1_max"]


def test_kept_histogram_follows_in_place_changes_of_the_maps_and_masks() -> None:
    rng = np.random.default_rng(5)
    masks = (rng.random((4, 32, 32)) < 0.1).astype(np.float32)
    maps = (rng.random(masks.shape) + masks).astype(np.float32)
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    maps[masks == 1] -= 1.0  # same arrays, new contents: the kept histogram must not be reused
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    masks[:] = masks[::-1].copy()
    assert f1_max(maps, masks) == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-4)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_exact_reference_on_random_blobs(blob_data, fpr_limit: float) -> None:
    maps, masks = blob_data
    assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(
        exact_aupro(maps, masks, fpr_limit), abs=1e-3
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
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(expected, abs=1e-9)
    assert exact_aupro(maps, masks, 0.3) == pytest.approx(expected, abs=1e-9)


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
    assert aupro(maps, masks) == pytest.approx((2 / 3 + 2 / 3 * 0.3) / 2, abs=1e-9)


def test_f1_max_on_maps_matches_sklearn_and_its_threshold_achieves_it() -> None:
    rng = np.random.default_rng(4)
    masks = rng.random((4, 8, 8)) < 0.3
    maps = (rng.integers(0, 10, masks.shape) + 3 * masks).astype(np.float32)
    best, threshold = f1_max_threshold(maps, masks)
    assert best == pytest.approx(sklearn_f1_max(masks, maps), abs=1e-9)
    predicted = maps >= threshold
    assert 2 * np.sum(predicted & masks) / (predicted.sum() + masks.sum()) == pytest.approx(best, abs=1e-9)


def test_iou_equals_hand_computation() -> None:
    # Map >= 0.5 selects (0,0), (0,1), (1,0); the mask is (0,1), (1,0), (1,1) in image 0 and (0,0) in
    # image 1 (scored 0.2). Intersection {(0,1), (1,0)} = 2; union 3 + 4 - 2 = 5 -> 0.4.
    maps = np.array([[[0.9, 0.6], [0.5, 0.1]], [[0.2, 0.0], [0.0, 0.0]]])
    masks = np.array([[[0, 1], [1, 1]], [[1, 0], [0, 0]]])
    assert iou(maps, masks, threshold=0.5) == pytest.approx(0.4)
    metric = AnomalyPixelMetrics(iou_threshold=0.5, num_bins=1024)
    metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    assert float(metric.compute()["pixel_iou"]) == pytest.approx(0.4)
    assert float(metric.iou(0.5)) == pytest.approx(0.4)


def test_empty_masks_warn_and_give_nan() -> None:
    maps, masks = np.random.default_rng(5).random((2, 8, 8)), np.zeros((2, 8, 8))
    with pytest.warns(RuntimeWarning, match="no defect region"):
        assert np.isnan(aupro(maps, masks))
    with pytest.warns(RuntimeWarning, match="pixel AUROC is undefined"):
        assert np.isnan(pixel_auroc(maps, masks))


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


# ----------------------------------------------------------------------------------- streaming
def _stream(metric: AnomalyPixelMetrics, maps: np.ndarray, masks: np.ndarray, num_batches: int) -> None:
    for batch_maps, batch_masks in zip(
        np.array_split(maps, num_batches), np.array_split(masks, num_batches), strict=True
    ):
        metric.update(torch.from_numpy(batch_maps)[:, None], torch.from_numpy(batch_masks)[:, None])


def _assert_close(streamed: dict[str, torch.Tensor], expected: dict[str, float], tolerance: float) -> None:
    for name in ("pixel_auroc", "pixel_aupro", "pixel_f1_max"):
        assert float(streamed[name]) == pytest.approx(expected[name], abs=tolerance), name


def test_streaming_over_10_batches_equals_functional(blob_data) -> None:
    maps, masks = blob_data
    metric = AnomalyPixelMetrics()
    _stream(metric, maps, masks, num_batches=10)
    _assert_close(metric.compute(), pixel_metrics(maps, masks), tolerance=1e-4)


def test_streaming_widens_the_range_when_later_scores_are_larger(blob_data) -> None:
    maps, masks = blob_data
    maps = maps.copy()
    maps[6:] = maps[6:] * 40 + 25  # later batches far above the first batches' range
    metric = AnomalyPixelMetrics()
    _stream(metric, maps[:6], masks[:6], num_batches=3)
    first_exponent = int(metric.grid_exponent)
    _stream(metric, maps[6:], masks[6:], num_batches=3)
    assert int(metric.grid_exponent) > first_exponent
    _assert_close(metric.compute(), pixel_metrics(maps, masks), tolerance=1e-4)
    assert float(metric.compute()["pixel_auroc"]) == pytest.approx(
        roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4
    )


def test_fixed_score_range_equals_functional(blob_data) -> None:
    maps, masks = blob_data
    metric = AnomalyPixelMetrics(score_range=(float(maps.min()), float(maps.max()) + 1e-3))
    _stream(metric, maps, masks, num_batches=4)
    _assert_close(metric.compute(), pixel_metrics(maps, masks), tolerance=1e-4)


def test_merging_metrics_with_different_ranges_equals_functional(blob_data) -> None:
    # merge_state runs the same window alignment as the DDP sync.
    maps, masks = blob_data
    maps = maps.copy()
    maps[6:] *= 10
    first_half, second_half = AnomalyPixelMetrics(), AnomalyPixelMetrics()
    _stream(first_half, maps[:6], masks[:6], num_batches=2)
    _stream(second_half, maps[6:], masks[6:], num_batches=2)
    assert int(first_half.grid_exponent) != int(second_half.grid_exponent)
    first_half.merge_state(second_half)
    _assert_close(first_half.compute(), pixel_metrics(maps, masks), tolerance=1e-4)


def test_streaming_state_size_does_not_grow_with_updates(blob_data) -> None:
    maps, masks = blob_data
    metric = AnomalyPixelMetrics(num_bins=4096)

    def state_bytes() -> int:
        return sum(value.numel() * value.element_size() for value in metric.metric_state.values())

    _stream(metric, maps[:2], masks[:2], num_batches=1)
    after_one_update = state_bytes()
    _stream(metric, np.tile(maps, (3, 1, 1)), np.tile(masks, (3, 1, 1)), num_batches=12)
    assert state_bytes() == after_one_update == (3 * 4096 + 4) * 8


def _ddp_worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    maps, masks = blob_maps_and_masks(n_maps=12, size=64, seed=0)
    maps[6:] *= 10  # rank 1 sees a 10x wider score range than rank 0
    metric = AnomalyPixelMetrics()
    own_images = slice(0, 6) if rank == 0 else slice(6, 12)
    _stream(metric, maps[own_images], masks[own_images], num_batches=2)
    results = {name: float(value) for name, value in metric.compute().items()}
    if rank == 0:
        torch.save(results, result_path)
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes re-import torch (~30 s on 2 cores); fork deadlocks after torch ran
def test_ddp_sync_of_two_processes_with_different_ranges_equals_functional(tmp_path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result_path = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(2, port, result_path), nprocs=2, join=True)
    maps, masks = blob_maps_and_masks(n_maps=12, size=64, seed=0)
    maps[6:] *= 10
    _assert_close(torch.load(result_path), pixel_metrics(maps, masks), tolerance=1e-4)


def test_forward_returns_the_batch_value_and_accumulates(blob_data) -> None:
    maps, masks = blob_data
    maps = maps.copy()
    maps[6:] *= 10  # the second call widens the range of the accumulated state
    metric = AnomalyPixelMetrics()
    metric(torch.from_numpy(maps[:6]), torch.from_numpy(masks[:6]))
    batch_value = metric(torch.from_numpy(maps[6:]), torch.from_numpy(masks[6:]))
    _assert_close(batch_value, pixel_metrics(maps[6:], masks[6:]), tolerance=1e-4)
    _assert_close(metric.compute(), pixel_metrics(maps, masks), tolerance=1e-4)
