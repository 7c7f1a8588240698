"""The embedded texture dataset: layout, determinism, disjoint regions, visible defects, cache manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_attn.data.errors import LayoutError
from anomaly_attn.data.layout import read_mvtec_layout
from anomaly_attn.data.textures import (
    DEFECT_PAINTERS,
    DEFECT_TYPES,
    MANIFEST_NAME,
    TextureParams,
    Textures,
    crop_at,
    crop_origins,
    region_columns,
    source_texture,
)
from anomaly_attn.training.datamodule import AnomalyDataModule
from tests.fixtures import all_masked, snapshot_tree

SMALL = {"image_size": 32, "crop_size": 32, "n_train": 12, "n_test_good": 3, "n_test_per_defect": 2}


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()
    }


def test_categories_need_no_disk(tmp_path: Path) -> None:
    dataset = Textures(root=tmp_path / "cache")
    assert dataset.categories() == ["brick", "grass", "gravel"]
    with pytest.raises(
        ValueError, match="unknown textures category 'wood'; valid categories: brick, grass, gravel"
    ):
        dataset.prepare("wood")
    assert not (tmp_path / "cache").exists()


def test_generates_the_mvtec_layout_with_binary_png_masks(tmp_path: Path) -> None:
    dataset = Textures(root=tmp_path, **SMALL)
    layout = dataset.prepare("grass")
    assert layout.root == tmp_path / "grass"
    records = read_mvtec_layout(layout)
    assert len(records.train) == 12
    assert [r.defect_type for r in records.test] == ["good"] * 3 + [
        d for d in sorted(DEFECT_TYPES) for _ in range(2)
    ]
    assert len(DEFECT_TYPES) >= 5
    assert (tmp_path / "grass" / "train" / "good" / "000.png").is_file()
    assert (tmp_path / "grass" / "ground_truth" / "scratch" / "001_mask.png").is_file()
    for record in records.test[3:]:
        with Image.open(record.mask_path) as mask:
            assert mask.format == "PNG" and mask.mode == "L" and mask.size == (32, 32)
            values = np.asarray(mask)
        assert set(np.unique(values).tolist()) == {0, 255}
    # No staging folder left behind (the lock file of common.locks stays: deleting it is not safe).
    assert [p.name for p in tmp_path.iterdir() if p.name != "grass"] == [".grass.lock"]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        Textures(root=tmp_path / name, generator_seed=seed, **SMALL).prepare("gravel")
    first, second, other = (_file_bytes(tmp_path / name / "gravel") for name in "abc")
    assert first == second
    assert first.keys() == other.keys() and first["train/good/000.png"] != other["train/good/000.png"]


def test_train_and_test_crops_come_from_disjoint_regions() -> None:
    params = TextureParams(
        crop_size=32,
        image_size=64,
        n_train=300,
        n_test_good=10,
        n_test_per_defect=6,
        generator_seed=0,
        train_fraction=0.6,
    )
    (train_start, train_stop), (test_start, test_stop) = region_columns(512, params)
    assert train_stop <= test_start
    for category in ("brick", "grass", "gravel"):
        train, test = crop_origins(category, params, (512, 512))
        assert train.shape == (300, 2) and test.shape == (10 + 6 * len(DEFECT_TYPES), 2)
        assert train[:, 1].min() >= train_start and (train[:, 1] + 32).max() <= train_stop
        assert test[:, 1].min() >= test_start and (test[:, 1] + 32).max() <= test_stop
        assert (train[:, 0] + 32).max() <= 512 and (test[:, 0] + 32).max() <= 512
        assert len({tuple(o) for o in train}) > 250  # random crops, not a handful repeated


@pytest.mark.parametrize("category", ["brick", "grass", "gravel"])
def test_defects_are_visible_confined_to_their_mask_and_of_comparable_area(category: str) -> None:
    source = source_texture(category)
    params = TextureParams(32, 64, 1, 1, 1, generator_seed=0, train_fraction=0.6)
    rng = np.random.default_rng(0)
    areas = {}
    for defect_type, paint in DEFECT_PAINTERS.items():
        fractions = []
        for trial in range(8):
            clean = crop_at(source, np.array([40 * trial, 300]), params)
            painted, mask = paint(clean.copy(), rng)
            change = np.abs(painted - clean)
            assert mask.dtype == bool and mask.any()
            assert change[mask].mean() > 0.2, f"{defect_type} on {category} is too faint"
            assert change[~mask].mean() < 0.01, f"{defect_type} changes pixels outside its mask"
            assert 0.0 <= painted.min() and painted.max() <= 1.0
            fractions.append(mask.mean())
        areas[defect_type] = float(np.mean(fractions))
    assert 0.02 < min(areas.values()) and max(areas.values()) < 0.07, areas
    assert max(areas.values()) / min(areas.values()) < 2.0, areas


def test_generation_is_fast_and_reused_until_a_parameter_changes(tmp_path: Path) -> None:
    dataset = Textures(root=tmp_path)  # the defaults: 300 train crops of 32 px upsampled to 64 px
    start = time.perf_counter()
    layout = dataset.prepare("brick")
    assert time.perf_counter() - start < 5.0
    manifest = json.loads((layout.root / MANIFEST_NAME).read_text())
    assert manifest["params"]["n_train"] == 300 and manifest["generator_version"] >= 1
    before = snapshot_tree(tmp_path)
    Textures(root=tmp_path).prepare("brick")
    assert snapshot_tree(tmp_path) == before  # reused, untouched
    changed = Textures(root=tmp_path, n_train=20).prepare("brick")
    assert len(read_mvtec_layout(changed).train) == 20  # regenerated, no stale 300 crops left


def test_a_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "brick" / "train").mkdir(parents=True)
    (tmp_path / "brick" / "notes.txt").write_text("mine")
    before = snapshot_tree(tmp_path)
    with pytest.raises(LayoutError, match="never overwritten"):
        Textures(root=tmp_path, **SMALL).prepare("brick")
    assert snapshot_tree(tmp_path) == before


def test_datamodule_on_textures(tmp_path: Path) -> None:
    datamodule = AnomalyDataModule(Textures(root=tmp_path, **SMALL, val_fraction=0.25, augment=True), "brick")
    datamodule.prepare_data()
    datamodule.setup()
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (9, 3, 13)
    assert datamodule.num_channels == 1 and datamodule.mean_image().shape == (1, 32, 32)
    assert all_masked(datamodule)
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["image"].shape[1:] == (1, 32, 32)
