"""Samples, decoding, caching, splits and augmentation of the datamodule on tiny MVTec/BTAD trees."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomaly_attn.data.dataset as dataset_module
from anomaly_attn.data.btad import BTAD
from anomaly_attn.data.errors import CorruptImageError, LayoutError
from anomaly_attn.data.folder import Folder
from anomaly_attn.data.layout import Record
from anomaly_attn.data.mvtec import MVTec
from anomaly_attn.data.splits import split_validation
from anomaly_attn.data.transforms import build_augmentation
from anomaly_attn.training.datamodule import AnomalyDataModule
from tests.fixtures import all_masked, make_btad_tree, make_mvtec_tree


def _setup(dataset, category: str, seed: int = 0) -> AnomalyDataModule:
    datamodule = AnomalyDataModule(dataset, category, seed=seed)
    datamodule.setup()
    return datamodule


def test_samples_follow_the_architecture_contract(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["bottle"], size=40)
    datamodule = _setup(MVTec(root=root, image_size=20, batch_size=3), "bottle")
    samples = [datamodule.test_set[i] for i in range(len(datamodule.test_set))]
    assert [s["label"].item() for s in samples] == [0, 0, 1, 1, 1]
    for sample in samples:
        assert sample["image"].shape == (3, 20, 20) and sample["image"].dtype == torch.float32
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
        assert sample["mask"].shape == (1, 20, 20) and sample["mask"].dtype == torch.float32
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        assert sample["label"].dtype == torch.int64 and sample["label"].ndim == 0
        assert sample["has_mask"] is True and Path(sample["path"]).is_file()
        if sample["label"] == 0:
            assert sample["defect_type"] == "good" and sample["mask"].sum() == 0
        else:
            # the fixture paints the defect square bright (250/255) exactly under the mask (the rest is
            # at most 160/255); resizing blurs only the square's rim
            assert sample["defect_type"] in {"broken_large", "broken_small", "contamination"}
            assert sample["image"][:, sample["mask"][0] > 0].mean() > 0.85
            assert sample["image"][:, sample["mask"][0] == 0].mean() < 0.5
            assert sample["mask"].mean() == pytest.approx(1 / 16, abs=0.02)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape == (3, 3, 20, 20) and batch["label"].tolist() == [0, 0, 1]
    assert batch["has_mask"].dtype == torch.bool and len(batch["path"]) == 3


@pytest.mark.parametrize(("category", "channels"), [("screw", 3), ("bottle", 1)])
def test_images_are_converted_to_the_configured_channels(
    tmp_path: Path, category: str, channels: int
) -> None:
    root = make_mvtec_tree(tmp_path, categories=[category])
    datamodule = _setup(MVTec(root=root, image_size=16, channels=channels), category)
    assert datamodule.num_channels == channels
    assert datamodule.train_images_tensor().shape == (3, channels, 16, 16)  # 4 train images, 1 held out


def test_masks_are_thresholded_at_127_and_resized_by_nearest_neighbour(tmp_path: Path) -> None:
    root = make_btad_tree(tmp_path, categories=["02"], size=32, top_folder=False)
    mask_path = root / "02" / "ground_truth" / "ko" / "0000.png"
    levels = np.zeros((32, 32), np.uint8)
    levels[:, 8:16] = 1  # a mask saved as {0, 1} would be read as empty by `> 127`...
    levels[:, 16:24] = 128  # ...and antialiased 128 counts as defect, 127 does not
    levels[:, 24:] = 127
    Image.fromarray(levels).save(mask_path)
    datamodule = _setup(BTAD(root=root, image_size=16), "02")
    record = next(r for r in datamodule.test_set.records if r.mask_path == mask_path)
    mask = datamodule.cache.mask(record)
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert mask[:, 8:12].all() and not mask[:, :8].any() and not mask[:, 12:].any()


def test_corrupt_image_is_named_or_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_mvtec_tree(tmp_path, categories=["carpet"])
    corrupt = root / "carpet" / "train" / "good" / "002.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(CorruptImageError, match=str(corrupt)):
        _setup(MVTec(root=root, image_size=16), "carpet")
    with caplog.at_level(logging.WARNING):
        datamodule = _setup(MVTec(root=root, image_size=16, skip_corrupt=True, val_fraction=0.0), "carpet")
    assert str(corrupt) in caplog.text and "skip" in caplog.text
    assert len(datamodule.train_set) == 3 and corrupt not in [r.path for r in datamodule.train_set.records]


def test_truncated_mask_is_a_corrupt_image(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["wood"])
    mask = root / "wood" / "ground_truth" / "hole" / "000_mask.png"
    mask.write_bytes(mask.read_bytes()[:40])
    with pytest.raises(CorruptImageError, match=str(mask)):
        _setup(MVTec(root=root, image_size=16), "wood")


def test_mask_of_another_size_names_both_files(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["pill"], size=32)
    mask = root / "pill" / "ground_truth" / "crack" / "000_mask.png"
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(mask)
    with pytest.raises(LayoutError) as error:
        _setup(MVTec(root=root, image_size=16), "pill")
    assert str(mask) in str(error.value)
    assert str(root / "pill" / "test" / "crack" / "000.png") in str(error.value)
    assert "32×30" in str(error.value) and "32×32" in str(error.value)


def test_each_file_is_decoded_once_across_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_mvtec_tree(tmp_path, categories=["leather"], n_train=6)
    decoded: list[Path] = []
    original = dataset_module.open_image

    def counting_open_image(path: Path, mode: str) -> Image.Image:
        decoded.append(path)
        return original(path, mode)

    monkeypatch.setattr(dataset_module, "open_image", counting_open_image)
    datamodule = _setup(MVTec(root=root, image_size=16, batch_size=2, augment=True), "leather")
    for _ in range(3):
        for loader in (
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            datamodule.test_dataloader(),
        ):
            list(loader)
    datamodule.mean_image()
    datamodule.setup("test")
    files = [p for p in (root / "leather").rglob("*.png")]
    assert sorted(decoded) == sorted(files)  # 6 train + 2 good + 5 defects + 5 masks, once each
    assert len(decoded) == 18


def test_validation_split_is_seeded_disjoint_and_complete(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["grid"], n_train=20)
    splits = {}
    for seed in (0, 0, 1):
        datamodule = _setup(MVTec(root=root, image_size=8, val_fraction=0.2), "grid", seed=seed)
        train = {r.path for r in datamodule.train_set.records}
        val = {r.path for r in datamodule.val_set.records}
        assert len(val) == 4 and not train & val
        assert train | val == set((root / "grid" / "train" / "good").iterdir())
        assert all(r.label == 0 for r in datamodule.val_set.records)
        splits.setdefault(seed, []).append(val)
    assert splits[0][0] == splits[0][1] and splits[0][0] != splits[1][0]


def test_split_validation_edge_cases() -> None:
    records = [Record(Path(f"{i}.png"), None, 0, "good") for i in range(3)]
    assert [len(part) for part in split_validation(records, 0.0, 0)] == [3, 0]
    assert [len(part) for part in split_validation(records, 0.01, 0)] == [2, 1]  # at least one held out
    assert [len(part) for part in split_validation(records[:1], 0.5, 0)] == [1, 0]  # never all of them
    assert split_validation(records, 0.5, 3) == split_validation(records[::-1], 0.5, 3)  # order-free


def test_mean_image_is_the_mean_of_unaugmented_training_images(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["carpet"], n_train=10)
    datamodule = _setup(MVTec(root=root, image_size=12, augment=True), "carpet")
    images = datamodule.train_images_tensor()
    assert images.shape == (9, 3, 12, 12)
    expected = torch.stack(
        [
            torch.from_numpy(datamodule.cache.image(r)).permute(2, 0, 1).float() / 255
            for r in datamodule.train_set.records
        ]
    ).mean(0)
    torch.testing.assert_close(datamodule.mean_image(), expected)


def test_texture_categories_flip_and_objects_do_not(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_mvtec_tree(tmp_path, categories=["carpet", "transistor"])
    carpet = _setup(MVTec(root=root, image_size=8, augment=True), "carpet")
    assert [type(t).__name__ for t in carpet.train_set.transform.transforms] == [
        "HorizontalFlip",
        "VerticalFlip",
    ]
    assert carpet.val_set.transform is None and carpet.test_set.transform is None
    with caplog.at_level(logging.WARNING):
        transistor = _setup(MVTec(root=root, image_size=8, augment=True), "transistor")
    assert transistor.train_set.transform is None and "no safe default augmentation" in caplog.text
    explicit = _setup(MVTec(root=root, image_size=8, augment={"HorizontalFlip": {"p": 1.0}}), "transistor")
    sample = explicit.train_set[0]
    unflipped = (
        torch.from_numpy(explicit.cache.image(explicit.train_set.records[0])).permute(2, 0, 1).float() / 255
    )
    torch.testing.assert_close(sample["image"], unflipped.flip(-1))


def test_augmentation_moves_image_and_mask_together() -> None:
    image = np.zeros((8, 8, 1), np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    image[2, 1] = 255
    mask[2, 1] = 1
    out = build_augmentation({"HorizontalFlip": {"p": 1.0}, "VerticalFlip": {"p": 1.0}})(
        image=image, mask=mask
    )
    assert out["image"][5, 6, 0] == 255 and out["mask"][5, 6] == 1 and out["mask"].sum() == 1


def test_unknown_augmentation_is_named() -> None:
    with pytest.raises(ValueError, match="'HorizontalFlipp' is not an albumentations transform"):
        build_augmentation({"HorizontalFlipp": {}})


def test_folder_test_set_without_masks_has_no_pixel_ground_truth(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["toothbrush"], n_per_defect=2)
    for mask in (root / "toothbrush" / "ground_truth" / "defective").iterdir():
        mask.unlink()
    datamodule = _setup(Folder(root=root, image_size=8), "toothbrush")
    assert not all_masked(datamodule)
    samples = [datamodule.test_set[i] for i in range(len(datamodule.test_set))]
    assert [(s["label"].item(), s["has_mask"]) for s in samples] == [
        (0, True),
        (0, True),
        (1, False),
        (1, False),
    ]
    assert all(s["mask"].sum() == 0 for s in samples)


def _first_batch_labels_in_a_loky_worker(root: str) -> list[int]:
    datamodule = _setup(MVTec(root=root, image_size=20, batch_size=5, num_workers=1), "bottle")
    return next(iter(datamodule.test_dataloader()))["label"].tolist()


def test_loader_workers_start_inside_a_joblib_launcher_job(tmp_path: Path) -> None:
    # hydra/launcher=joblib runs each job in a loky worker, whose default start method is loky's own;
    # DataLoader workers started through it died ("'Process' object has no attribute 'env'").
    joblib = pytest.importorskip("joblib")
    root = make_mvtec_tree(tmp_path, categories=["bottle"], size=40)
    run = joblib.Parallel(n_jobs=2, backend="loky")  # n_jobs=1 would run in this process
    [labels] = run(joblib.delayed(_first_batch_labels_in_a_loky_worker)(str(root)) for _ in range(1))
    assert labels == [0, 0, 1, 1, 1]
