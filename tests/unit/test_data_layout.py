"""The MVTec-layout reader and the dataset classes that locate MVTec AD, BTAD and custom folders."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_attn.data.btad import BTAD
from anomaly_attn.data.errors import LayoutError, MissingDataError
from anomaly_attn.data.folder import Folder
from anomaly_attn.data.layout import CategoryLayout, read_mvtec_layout
from anomaly_attn.data.mvtec import MVTEC_CATEGORIES, MVTEC_SITE, MVTec
from tests.fixtures import MVTEC_DEFECT_TYPES, make_btad_tree, make_mvtec_tree, snapshot_tree


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec_tree(tmp_path_factory.mktemp("mvtec"))


def test_reads_all_fifteen_mvtec_categories(mvtec_root: Path) -> None:
    dataset = MVTec(root=mvtec_root)
    assert dataset.categories() == sorted(MVTEC_DEFECT_TYPES) == list(MVTEC_CATEGORIES)
    for category in dataset.categories():
        records = read_mvtec_layout(dataset.prepare(category))
        defect_types = MVTEC_DEFECT_TYPES[category]
        assert len(records.train) == 4
        assert all(r.label == 0 and r.mask_path is None and r.defect_type == "good" for r in records.train)
        anomalous = [r for r in records.test if r.label == 1]
        assert len(records.test) == 2 + len(defect_types)
        assert sorted({r.defect_type for r in anomalous}) == sorted(defect_types)
        for record in anomalous:
            assert record.mask_path == record.path.parents[2] / "ground_truth" / record.defect_type / (
                record.path.stem + "_mask.png"
            )


@pytest.mark.parametrize("top_folder", [True, False])
def test_reads_btad_with_or_without_the_zip_top_folder(tmp_path: Path, top_folder: bool) -> None:
    root = make_btad_tree(tmp_path, top_folder=top_folder)
    dataset = BTAD(root=root)
    assert dataset.categories() == ["01", "02", "03"]
    for category, extension in [("01", ".png"), ("02", ".png"), ("03", ".bmp")]:
        records = read_mvtec_layout(dataset.prepare(category))
        assert len(records.train) == 4
        assert [r.label for r in records.test] == [0, 0, 1, 1]
        for record in records.test[2:]:
            assert record.defect_type == "ko"
            assert record.mask_path.name == record.path.stem + extension  # same stem, no suffix


def test_btad_accepts_masks_with_a_mask_suffix(tmp_path: Path) -> None:
    root = make_btad_tree(tmp_path, categories=["02"], top_folder=False)
    mask_folder = root / "02" / "ground_truth" / "ko"
    for mask in mask_folder.iterdir():
        mask.rename(mask.with_name(mask.stem + "_mask" + mask.suffix))
    records = read_mvtec_layout(BTAD(root=root).prepare("02"))
    assert [r.mask_path.name for r in records.test if r.label] == ["0000_mask.png", "0001_mask.png"]


def test_unknown_category_lists_the_valid_ones_before_touching_disk(tmp_path: Path) -> None:
    dataset = MVTec(root=tmp_path / "does_not_exist")
    with pytest.raises(ValueError, match="unknown mvtec category 'bottles'.*bottle, cable, capsule"):
        dataset.check_category("bottles")
    with pytest.raises(ValueError, match="valid categories: 01, 02, 03"):
        BTAD(root=tmp_path / "nothing").prepare("04")
    assert not (tmp_path / "does_not_exist").exists()


def test_missing_mvtec_data_explains_download_and_expected_path(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as error:
        MVTec(root=tmp_path / "mvtec").prepare("bottle")
    message = str(error.value)
    assert str(tmp_path / "mvtec" / "bottle") in message
    assert "dataset.download=true" in message and MVTEC_SITE in message
    assert "train/good" in message and "_mask.png" in message


def test_missing_btad_data_names_both_accepted_places(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as error:
        BTAD(root=tmp_path).prepare("03")
    assert str(tmp_path / "03") in str(error.value)
    assert str(tmp_path / "BTech_Dataset_transformed" / "03") in str(error.value)
    assert "dataset.download=true" in str(error.value)


def test_download_is_called_only_when_enabled_and_data_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []

    def fake_download(url: str, dest_dir: Path, sha256: str | None, progress: bool = True) -> Path:
        calls.append((url, dest_dir, sha256))
        make_btad_tree(dest_dir, categories=["01"])
        return dest_dir

    monkeypatch.setitem(
        sys.modules, "anomaly_attn.data.download", types.SimpleNamespace(download_and_extract=fake_download)
    )
    root = tmp_path / "btad"
    layout = BTAD(root=root, download=True, url=None, sha256="abc").prepare("01")
    assert calls == [("https://avires.dimi.uniud.it/papers/btad/btad.zip", root, "abc")]
    assert layout.root == root / "BTech_Dataset_transformed" / "01"
    BTAD(root=root, download=True).prepare("01")  # already there: no second download
    assert len(calls) == 1


def test_defect_image_without_mask_names_image_and_expected_mask(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["hazelnut"])
    missing = root / "hazelnut" / "ground_truth" / "crack" / "000_mask.png"
    missing.unlink()
    with pytest.raises(LayoutError) as error:
        read_mvtec_layout(MVTec(root=root).prepare("hazelnut"))
    assert str(root / "hazelnut" / "test" / "crack" / "000.png") in str(error.value)
    assert str(missing) in str(error.value)


def test_empty_category_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, categories=["tile"])
    for image in (root / "tile" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(LayoutError, match="no training images"):
        read_mvtec_layout(MVTec(root=root).prepare("tile"))


def test_category_without_test_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cat" / "train" / "good").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cat" / "train" / "good" / "a.png")
    with pytest.raises(LayoutError, match="no test images"):
        read_mvtec_layout(CategoryLayout(root=tmp_path / "cat", category="cat"))


def test_folder_dataset_custom_names_and_optional_masks(tmp_path: Path) -> None:
    root = make_btad_tree(tmp_path, categories=["02"], top_folder=False)
    (tmp_path / ".hidden").mkdir()
    dataset = Folder(root=root, normal_dir="ok", mask_suffix="")
    assert dataset.categories() == ["02"]
    records = read_mvtec_layout(dataset.prepare("02"))
    assert sum(r.mask_path is not None for r in records.test) == 2
    for mask in (root / "02" / "ground_truth" / "ko").iterdir():
        mask.unlink()
    records = read_mvtec_layout(dataset.prepare("02"))
    assert [(r.label, r.mask_path) for r in records.test[2:]] == [(1, None), (1, None)]
    with pytest.raises(LayoutError, match="has no mask"):
        read_mvtec_layout(Folder(root=root, normal_dir="ok", require_masks=True).prepare("02"))
    with pytest.raises(ValueError, match="unknown folder category 'x'; valid categories: 02"):
        dataset.check_category("x")


def test_folder_dataset_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="train/good"):
        Folder(root=tmp_path / "absent").categories()


def test_reading_never_modifies_the_root(mvtec_root: Path, tmp_path: Path) -> None:
    from anomaly_attn.training.datamodule import AnomalyDataModule

    btad_root = make_btad_tree(tmp_path)
    before = snapshot_tree(mvtec_root), snapshot_tree(btad_root)
    for dataset, category in [(MVTec(root=mvtec_root, image_size=16), "screw"), (BTAD(root=btad_root), "03")]:
        datamodule = AnomalyDataModule(dataset, category)
        datamodule.setup()
        for loader in (
            datamodule.train_dataloader(),
            datamodule.val_dataloader(),
            datamodule.test_dataloader(),
        ):
            list(loader)
        datamodule.mean_image()
    assert (snapshot_tree(mvtec_root), snapshot_tree(btad_root)) == before
