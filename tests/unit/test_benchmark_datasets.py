"""VisA, MPDD and MVTec AD 2: reading their real layouts, splits, mask binarization, errors, downloads.

Trees come from ``tests.benchmark_trees`` (seeded noise in the official layouts, a few files each).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_attn.cli.sweeps import expand_sweep_overrides
from anomaly_attn.data.dataset import AnomalyImageDataset, ImageCache
from anomaly_attn.data.errors import LayoutError, MissingDataError
from anomaly_attn.data.layout import DEFAULT_MASK_THRESHOLD, Record, read_layout
from anomaly_attn.data.mpdd import MPDD, MPDD_CATEGORIES, MPDD_DOWNLOAD_PAGE
from anomaly_attn.data.mvtec_ad2 import MVTEC_AD2_ARCHIVE, MVTEC_AD2_CATEGORIES, MVTEC_AD2_SITE, MVTecAD2
from anomaly_attn.data.visa import VISA_CATEGORIES, VISA_SHA256, VISA_URL, VisA, defect_type_name
from anomaly_attn.training.datamodule import AnomalyDataModule
from tests.benchmark_trees import (
    MPDD_DEFECT_TYPES,
    VISA_DEFECT_TYPES,
    make_mpdd_tree,
    make_mvtec_ad2_tree,
    make_visa_tree,
    visa_mask,
)
from tests.conftest import compose_cfg
from tests.fixtures import all_masked, snapshot_tree
from tests.unit.test_download import serve  # noqa: F401 (pytest fixture: loopback HTTP server)


def expanded_categories(argv: list[str]) -> list[str]:
    (category,) = [arg for arg in argv if arg.startswith("category=")]
    return category.removeprefix("category=").split(",")


# ----------------------------------------------------------------------------- VisA
def test_visa_reads_all_twelve_categories_as_the_split_file_assigns_them(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path / "visa", VISA_CATEGORIES, n_train=3, n_test_good=2, n_anomalous=2)
    before = snapshot_tree(root)
    dataset = VisA(root=root)
    assert dataset.categories() == list(VISA_CATEGORIES) and len(VISA_CATEGORIES) == 12
    for category in VISA_CATEGORIES:
        records = read_layout(dataset.prepare(category))
        normal = root / category / "Data" / "Images" / "Normal"
        # Normal/0000 and 0001 are test images in 1cls.csv, 0002-0004 training ones: the csv decides.
        assert [r.path for r in records.train] == [normal / f"{i:04d}.JPG" for i in (2, 3, 4)]
        assert all(r.label == 0 and r.mask_path is None for r in records.train)
        assert [(r.path, r.label) for r in records.test[:2]] == [
            (normal / "0000.JPG", 0),
            (normal / "0001.JPG", 0),
        ]
        anomalous = records.test[2:]
        assert [r.label for r in anomalous] == [1, 1] and records.val is None
        for record in anomalous:
            assert (
                record.mask_path == root / category / "Data" / "Masks" / "Anomaly" / f"{record.path.stem}.png"
            )
            assert record.mask_threshold == 0, "VisA masks are 1..N: binarized with > 0"
        assert sorted(r.defect_type for r in anomalous) == sorted(VISA_DEFECT_TYPES)
    assert snapshot_tree(root) == before, "reading never writes"


def test_visa_small_integer_masks_are_binarized_with_greater_than_zero(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path, ["pcb1"], height=32, width=32, n_anomalous=1)
    datamodule = AnomalyDataModule(VisA(root=root, image_size=32, val_fraction=0.0), "pcb1")
    datamodule.setup()
    (anomalous,) = [i for i, r in enumerate(datamodule.test_set.records) if r.label == 1]
    mask = datamodule.test_set[anomalous]["mask"][0].numpy()
    expected = visa_mask(32, 32) > 0
    assert set(np.unique(mask)) == {0.0, 1.0} and np.array_equal(mask == 1, expected)
    # The same file with the generic 0-255 threshold would hold no anomalous pixel at all.
    record = datamodule.test_set.records[anomalous]
    generic = AnomalyImageDataset([record._replace(mask_threshold=DEFAULT_MASK_THRESHOLD)], ImageCache(32, 3))
    assert generic[0]["mask"].sum() == 0


def test_mvtec_style_masks_keep_the_127_threshold(tmp_path: Path) -> None:
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(image)
    Image.fromarray(np.array([[0, 100, 128, 255] * 2] * 8, dtype=np.uint8)).save(mask)
    sample = AnomalyImageDataset([Record(image, mask, 1, "crack")], ImageCache(8, 3))[0]
    assert sample["mask"][0, 0].tolist() == [0, 0, 1, 1] * 2


def test_visa_without_image_anno_uses_the_defect_type_anomaly(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path, ["candle"])
    (root / "candle" / "image_anno.csv").unlink()
    records = read_layout(VisA(root=root).prepare("candle"))
    assert {r.defect_type for r in records.test if r.label} == {"anomaly"}
    assert defect_type_name(" Chunk of wax missing ") == "chunk_of_wax_missing"


def test_visa_accepts_the_archive_top_folder_and_an_own_split_file(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path, ["fryum"], top_folder="VisA_20220922")
    layout = VisA(root=tmp_path).prepare("fryum")
    assert layout.root == tmp_path / "VisA_20220922" / "fryum"
    split = tmp_path / "VisA_20220922" / "split_csv" / "1cls.csv"
    lines = split.read_text().splitlines()
    mine = tmp_path / "mine.csv"
    mine.write_text("\n".join(line for line in lines if "Normal/0003" not in line) + "\n")
    records = read_layout(VisA(root=root, split_file=str(mine)).prepare("fryum"))
    assert len(records.train) == 3, "the row left out of the split file is not read"


def test_missing_visa_data_names_the_expected_paths_and_the_download(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as error:
        VisA(root=tmp_path / "visa").prepare("capsules")
    message = str(error.value)
    for text in [
        str(tmp_path / "visa" / "capsules"),
        "Data/Images/{Normal,Anomaly}",
        "split_csv/1cls.csv",
        "dataset.download=true",
        VISA_URL,
    ]:
        assert text in message, f"{text!r} missing from: {message}"
    with pytest.raises(ValueError, match="unknown visa category 'pcb5'; valid categories: candle, capsules"):
        VisA(root=tmp_path).check_category("pcb5")


def test_visa_without_its_split_file_says_where_it_should_be(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path, ["cashew"])
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(MissingDataError) as error:
        read_layout(VisA(root=root).prepare("cashew"))
    assert str(root / "split_csv" / "1cls.csv") in str(error.value) and "VisA_20220922.tar" in str(
        error.value
    )


@pytest.mark.parametrize(
    "case", ["missing_image", "missing_mask", "anomalous_train", "bad_header", "no_rows"]
)
def test_visa_bad_split_file_names_the_culprit(tmp_path: Path, case: str) -> None:
    root = make_visa_tree(tmp_path, ["macaroni1"])
    split = root / "split_csv" / "1cls.csv"
    text = split.read_text()
    if case == "missing_image":
        (root / "macaroni1" / "Data" / "Images" / "Normal" / "0003.JPG").unlink()
        expected = [str(split), str(root / "macaroni1" / "Data" / "Images" / "Normal" / "0003.JPG")]
    elif case == "missing_mask":
        (root / "macaroni1" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
        expected = [
            str(root / "macaroni1" / "Data" / "Images" / "Anomaly" / "001.JPG"),
            str(root / "macaroni1" / "Data" / "Masks" / "Anomaly" / "001.png"),
            "has no mask",
        ]
    elif case == "anomalous_train":
        split.write_text(text.replace("macaroni1,test,anomaly", "macaroni1,train,anomaly", 1))
        expected = [str(split), "anomalous training image", "1cls.csv"]
    elif case == "bad_header":
        split.write_text(text.replace("object,split", "obj,split", 1))
        expected = [str(split), "object", "object,split,label,image,mask"]
    else:
        expected = [str(split), "no row for category 'macaroni2'"]
    category = "macaroni2" if case == "no_rows" else "macaroni1"
    if case == "no_rows":
        (root / "macaroni2").mkdir()
    with pytest.raises(LayoutError) as error:
        read_layout(VisA(root=root).prepare(category))
    for part in expected:
        assert part in str(error.value), f"{part!r} missing from: {error.value}"


def test_visa_defaults_to_the_official_archive_and_its_checksum() -> None:
    official = VisA(root="/nowhere")
    assert (official.url, official.sha256) == (VISA_URL, VISA_SHA256) and len(VISA_SHA256) == 64
    mirror = VisA(root="/nowhere", url="http://127.0.0.1:1/VisA_20220922.tar")
    assert mirror.sha256 is None, "the official checksum is not assumed for another URL"


def test_visa_download_from_loopback_extracts_the_tar_once(tmp_path: Path, serve) -> None:  # noqa: F811
    source = make_visa_tree(tmp_path / "source", ["pcb2", "pcb3"])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(source.rglob("*")):
            archive.add(path, path.relative_to(source).as_posix(), recursive=False)
    payload = buffer.getvalue()
    server = serve({"VisA_20220922.tar": payload})
    root = tmp_path / "data" / "visa"
    options = {
        "download": True,
        "url": server.url("VisA_20220922.tar"),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    records = read_layout(VisA(root=root, **options).prepare("pcb3"))
    assert len(records.train) == 4 and sum(r.label for r in records.test) == 2
    assert not (root / "VisA_20220922.tar").exists(), "the archive is deleted after extraction"
    served = server.bytes_served
    VisA(root=root, **options).prepare("pcb2")
    assert server.bytes_served == served, "the second category comes from the same extracted archive"


# ----------------------------------------------------------------------------- MPDD
def test_mpdd_reads_all_six_parts_in_the_mvtec_layout(tmp_path: Path) -> None:
    root = make_mpdd_tree(tmp_path / "MPDD")
    dataset = MPDD(root=tmp_path)  # the folder above MPDD/ works too
    assert dataset.categories() == list(MPDD_CATEGORIES) == list(MPDD_DEFECT_TYPES)
    for category in MPDD_CATEGORIES:
        records = read_layout(dataset.prepare(category))
        anomalous = [r for r in records.test if r.label == 1]
        assert len(records.train) == 4 and len(records.test) == 2 + len(MPDD_DEFECT_TYPES[category])
        assert sorted({r.defect_type for r in anomalous}) == sorted(MPDD_DEFECT_TYPES[category])
        assert all(
            r.mask_path.name == r.path.stem + "_mask.png" and r.mask_threshold == 127 for r in anomalous
        )
        assert all(r.path.is_relative_to(root / category) for r in records.test)


def test_missing_mpdd_data_says_where_to_get_it_also_with_download_true(tmp_path: Path) -> None:
    for dataset in (MPDD(root=tmp_path / "mpdd"), MPDD(root=tmp_path / "mpdd", download=True)):
        with pytest.raises(MissingDataError) as error:
            dataset.prepare("metal_plate")
        message = str(error.value)
        for text in [str(tmp_path / "mpdd" / "metal_plate"), MPDD_DOWNLOAD_PAGE, "_mask.png", "dataset.url"]:
            assert text in message, f"{text!r} missing from: {message}"
    assert "no url is configured" in message, "download=true without a url is refused, not attempted"


# ----------------------------------------------------------------------------- MVTec AD 2
def test_mvtec_ad2_reads_train_validation_and_the_public_test_set(tmp_path: Path) -> None:
    root = make_mvtec_ad2_tree(tmp_path, MVTEC_AD2_CATEGORIES, n_train=4, n_val=3, n_test_good=2, n_bad=2)
    dataset = MVTecAD2(root=root)
    assert dataset.categories() == list(MVTEC_AD2_CATEGORIES) and len(MVTEC_AD2_CATEGORIES) == 8
    for category in MVTEC_AD2_CATEGORIES:
        records = read_layout(dataset.prepare(category))
        folder = root / category
        assert [r.path.parent for r in records.train] == [folder / "train" / "good"] * 4
        assert [r.path.parent for r in records.val] == [folder / "validation" / "good"] * 3
        assert [(r.path.parent.name, r.label, r.defect_type) for r in records.test] == [
            ("good", 0, "good"),
            ("good", 0, "good"),
            ("bad", 1, "bad"),
            ("bad", 1, "bad"),
        ], "test_public only: ground_truth is not a defect folder, private sets are not read"
        for record in records.test[2:]:
            assert (
                record.mask_path
                == folder / "test_public" / "ground_truth" / "bad" / f"{record.path.stem}_mask.png"
            )


def test_mvtec_ad2_validates_on_its_official_validation_images(tmp_path: Path) -> None:
    root = make_mvtec_ad2_tree(tmp_path, ["vial"], n_train=5, n_val=3)
    datamodule = AnomalyDataModule(MVTecAD2(root=root, image_size=16, val_fraction=0.4), "vial")
    datamodule.setup()
    assert len(datamodule.train_set) == 5, "no training image is held out: validation/good exists"
    assert [Path(r.path).parent.name for r in datamodule.val_set.records] == ["good"] * 3
    assert all("validation" in str(r.path) for r in datamodule.val_set.records)
    assert len(datamodule.test_set) == 4 and all_masked(datamodule)


def test_mvtec_ad2_without_validation_images_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec_ad2_tree(tmp_path, ["rice"], n_val=0)
    expected = f"no validation images: expected files with extensions .* in {root / 'rice'}"
    with pytest.raises(LayoutError, match=expected):
        read_layout(MVTecAD2(root=root).prepare("rice"))


def test_missing_mvtec_ad2_data_explains_the_licence_download(tmp_path: Path) -> None:
    for dataset in (MVTecAD2(root=tmp_path / "ad2"), MVTecAD2(root=tmp_path / "ad2", download=True)):
        with pytest.raises(MissingDataError) as error:
            dataset.prepare("walnuts")
        message = str(error.value)
        for text in [
            str(tmp_path / "ad2" / "walnuts"),
            MVTEC_AD2_SITE,
            "licence",
            "mvtec_ad_2.tar.gz",
            "test_public/ground_truth/bad",
            "dataset.url=",
        ]:
            assert text in message, f"{text!r} missing from: {message}"


@pytest.mark.parametrize("name", ["mpdd", "mvtec_ad2"])
def test_mpdd_and_mvtec_ad2_download_from_a_given_url(tmp_path: Path, serve, name: str) -> None:  # noqa: F811
    if name == "mpdd":
        source, archive_name, category = make_mpdd_tree(tmp_path / "src", ["tubes"]), "mpdd.zip", "tubes"
    else:
        source, archive_name, category = (
            make_mvtec_ad2_tree(tmp_path / "src", ["can"]),
            MVTEC_AD2_ARCHIVE,
            "can",
        )
    buffer = io.BytesIO()
    if archive_name.endswith(".zip"):
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in sorted(source.rglob("*")):
                archive.write(path, path.relative_to(source).as_posix())
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(source, ".")
    server = serve({archive_name: buffer.getvalue()})
    dataset_class = MPDD if name == "mpdd" else MVTecAD2
    root = tmp_path / "data"
    dataset = dataset_class(root=root, download=True, url=server.url(archive_name))
    records = read_layout(dataset.prepare(category))
    assert records.test and all(r.path.is_relative_to(root / category) for r in records.test)
    assert not (root / archive_name).exists(), "the archive is deleted after extraction"


# ----------------------------------------------------------------------------- category globs
@pytest.mark.parametrize(
    ("name", "categories"),
    [("visa", VISA_CATEGORIES), ("mpdd", MPDD_CATEGORIES), ("mvtec_ad2", MVTEC_AD2_CATEGORIES)],
)
def test_category_glob_expands_to_every_category(
    tmp_path: Path, name: str, categories: tuple[str, ...]
) -> None:
    default_root = {"visa": "visa", "mpdd": "mpdd", "mvtec_ad2": "mvtec_ad_2"}[name]
    assert Path(compose_cfg([f"dataset={name}"]).dataset.root).name == default_root
    argv = expand_sweep_overrides(["-m", f"dataset={name}", f"dataset.root={tmp_path}", "category=glob(*)"])
    assert expanded_categories(argv) == sorted(categories) and len(categories) in (12, 6, 8)
    subset = expand_sweep_overrides(
        [f"dataset={name}", f"dataset.root={tmp_path}", f"category=glob(*,exclude={categories[0]})"]
    )
    assert (
        categories[0] not in expanded_categories(subset)
        and len(expanded_categories(subset)) == len(categories) - 1
    )
