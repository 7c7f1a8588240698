"""Corrupted Fashion-MNIST: IDX reading, the generated MVTec-layout tree, protocols, download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_attn.data.errors import CorruptImageError, MissingDataError
from anomaly_attn.data.fmnist import DEBIAN_DIR, IDX_FILES, FashionMNIST
from anomaly_attn.data.idx_format import read_idx
from anomaly_attn.data.layout import read_mvtec_layout
from anomaly_attn.data.painted_shapes import MIN_GRAY_CONTRAST

PER_CLASS = 20  # train and test images per class in the fixture


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0803 if array.ndim == 3 else 0x0801
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def _fake_split(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Garment-like images: a mid-gray textured block on a black background, labels 0..9 interleaved."""
    labels = np.tile(np.arange(10, dtype=np.uint8), PER_CLASS)
    images = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    images[:, 4:24, 6:22] = rng.integers(90, 170, size=(len(labels), 20, 16))
    return images, labels


def _write_fixture(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_images, train_labels = _fake_split(rng)
    test_images, test_labels = _fake_split(rng)
    arrays = dict(zip(IDX_FILES, (train_images, train_labels, test_images, test_labels), strict=True))
    for name, array in arrays.items():
        _write_idx(folder / name, array)
    return {name: (folder / name).read_bytes() for name in IDX_FILES}


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    root = tmp_path / "idx"
    _write_fixture(root)
    return root


def _dataset(root: Path, cache: Path, **kwargs) -> FashionMNIST:
    return FashionMNIST(root=root, cache_dir=cache, **kwargs)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_read_idx_shapes_and_bad_files(flat_root: Path, tmp_path: Path) -> None:
    images = read_idx(flat_root / "train-images-idx3-ubyte.gz", 3)
    labels = read_idx(flat_root / "train-labels-idx1-ubyte.gz", 1)
    assert images.shape == (10 * PER_CLASS, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [PER_CLASS] * 10

    with pytest.raises(CorruptImageError, match="magic number 0x00000801.*0x00000803"):
        read_idx(flat_root / "train-labels-idx1-ubyte.gz", 3)
    truncated = tmp_path / "truncated.gz"
    with gzip.open(flat_root / "train-images-idx3-ubyte.gz") as stream:
        truncated.write_bytes(gzip.compress(stream.read()[:-5]))
    with pytest.raises(CorruptImageError, match="truncated.gz.*truncated or corrupt"):
        read_idx(truncated, 3)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello")
    with pytest.raises(CorruptImageError, match="plain.gz"):
        read_idx(not_gzip, 3)


def test_corrupted_tree_counts_masks_and_determinism(flat_root: Path, tmp_path: Path) -> None:
    layout = _dataset(flat_root, tmp_path / "cache", seed=1).prepare("3")
    root = layout.root
    assert root == tmp_path / "cache" / "corrupted_white_seed1" / "3"
    assert layout.masks_required and layout.normal_dir == "good" and layout.mask_suffix == "_mask"
    train = _pngs(root / "train/good")
    normal, corrupted = _pngs(root / "test/good"), _pngs(root / "test/corrupted")
    masks = _pngs(root / "ground_truth/corrupted")
    assert (len(train), len(normal), len(corrupted), len(masks)) == (PER_CLASS, 10, 10, 10)
    assert [path.stem + "_mask" for path in corrupted] == [path.stem for path in masks]
    assert not list(root.rglob("*.jpg"))
    # File names are indices into the IDX file: class 3 sits at positions 3, 13, 23, ...
    assert all(int(path.stem) % 10 == 3 for path in train + normal + corrupted)

    source = read_idx(flat_root / "t10k-images-idx3-ubyte.gz", 3)
    for image_path, mask_path in zip(corrupted, masks, strict=True):
        image = np.asarray(Image.open(image_path))
        mask = np.asarray(Image.open(mask_path))
        assert Image.open(mask_path).format == "PNG"
        assert set(np.unique(mask)) == {0, 255}
        painted = mask == 255
        assert 9 <= painted.sum() <= 100  # a 3-8 px shape dilated by 1 px
        assert (image[painted] == 255).all()
        original = source[int(image_path.stem)]
        assert (image[~painted] == original[~painted]).all()  # only the masked pixels changed
    for image_path in normal:
        assert (np.asarray(Image.open(image_path)) == source[int(image_path.stem)]).all()

    records = read_mvtec_layout(layout)
    assert len(records.train) == PER_CLASS
    assert sum(record.label for record in records.test) == 10
    assert all(record.mask_path is not None for record in records.test if record.label == 1)

    again = _dataset(flat_root, tmp_path / "cache2", seed=1).prepare("3").root
    assert [path.read_bytes() for path in masks] == [
        path.read_bytes() for path in _pngs(again / "ground_truth/corrupted")
    ]
    other_seed = _dataset(flat_root, tmp_path / "cache3", seed=2).prepare("3").root
    assert [path.name for path in _pngs(other_seed / "test/corrupted")] != [path.name for path in corrupted]


def test_gray_shapes_same_masks_visible_levels(flat_root: Path, tmp_path: Path) -> None:
    white = _dataset(flat_root, tmp_path, corruption="white").prepare(5).root
    gray = _dataset(flat_root, tmp_path, corruption="gray").prepare(5).root
    assert gray.name == "5" and gray.parent.name == "corrupted_gray_seed0"
    white_masks = [path.read_bytes() for path in _pngs(white / "ground_truth/corrupted")]
    assert white_masks == [path.read_bytes() for path in _pngs(gray / "ground_truth/corrupted")]

    source = read_idx(flat_root / "t10k-images-idx3-ubyte.gz", 3)
    levels = []
    for image_path in _pngs(gray / "test/corrupted"):
        image = np.asarray(Image.open(image_path))
        painted = (
            np.asarray(Image.open(gray / "ground_truth/corrupted" / f"{image_path.stem}_mask.png")) == 255
        )
        painted_levels = np.unique(image[painted])
        assert len(painted_levels) == 1  # one level per shape
        level = int(painted_levels[0])
        original = source[int(image_path.stem)][painted].astype(float)
        assert np.abs(original - level).mean() >= MIN_GRAY_CONTRAST
        levels.append(level)
    assert len(set(levels)) > 1 and min(levels) < 255
    manifest = json.loads((gray / "manifest.json").read_text())
    assert [entry["level"] for entry in manifest["painted"]] == levels


def test_aliases_and_unknown_category(flat_root: Path, tmp_path: Path) -> None:
    dataset = _dataset(flat_root, tmp_path)
    assert dataset.categories() == [str(index) for index in range(10)]
    assert dataset.canonical_category("boot") == "9"
    assert dataset.canonical_category("TShirt") == "0"
    assert dataset.canonical_category(7) == "7"
    assert dataset.prepare("dress").root == dataset.prepare("3").root
    with pytest.raises(ValueError, match=r"'hat'.*0, 1, 2.*boot=9"):
        dataset.check_category("hat")
    with pytest.raises(ValueError, match="unknown protocol 'ovr'.*one_vs_rest"):
        _dataset(flat_root, tmp_path, protocol="ovr")


def test_one_vs_rest_counts_and_labels(flat_root: Path, tmp_path: Path) -> None:
    layout = _dataset(flat_root, tmp_path, protocol="one_vs_rest", seed=3).prepare("sneaker")
    root = layout.root
    assert root == tmp_path / "one_vs_rest_white_seed3" / "7"
    assert not layout.masks_required
    others = _pngs(root / "test/other_class")
    assert len(_pngs(root / "test/good")) == PER_CLASS
    assert len(others) == PER_CLASS
    assert not (root / "ground_truth").exists()
    labels = read_idx(flat_root / "t10k-labels-idx1-ubyte.gz", 1)
    other_classes = [int(path.stem.split("_class")[1]) for path in others]
    assert all(
        labels[int(path.stem.split("_")[0])] == cls for path, cls in zip(others, other_classes, strict=True)
    )
    assert 7 not in other_classes and len(set(other_classes)) > 3
    manifest = json.loads((root / "manifest.json").read_text())
    assert sum(manifest["anomalous_per_class"]) == PER_CLASS and manifest["anomalous_per_class"][7] == 0

    records = read_mvtec_layout(layout)
    assert sorted(record.label for record in records.test) == [0] * PER_CLASS + [1] * PER_CLASS
    assert {record.defect_type for record in records.test if record.label} == {"other_class"}
    assert all(record.mask_path is None for record in records.test)


def test_torchvision_layout_and_regeneration_on_change(tmp_path: Path) -> None:
    _write_fixture(tmp_path / "root" / "FashionMNIST" / "raw")
    dataset = _dataset(tmp_path / "root", None)
    layout = dataset.prepare(1)
    assert layout.root == tmp_path / "root" / "generated" / "corrupted_white_seed0" / "1"
    marker = layout.root / "train/good/marker.txt"
    marker.write_text("kept while parameters are unchanged")
    dataset.prepare(1)
    assert marker.exists()
    manifest_path = layout.root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["generator_version"] = -1  # as if written by an older generator
    manifest_path.write_text(json.dumps(manifest))
    dataset.prepare(1)
    assert not marker.exists()
    assert len(_pngs(layout.root / "train/good")) == PER_CLASS


def test_missing_files_message(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as caught:
        _dataset(tmp_path / "empty", tmp_path / "cache").prepare(0)
    message = str(caught.value)
    for expected in (
        *IDX_FILES,
        "FashionMNIST/raw",
        "apt-get install dataset-fashion-mnist",
        "download=true",
    ):
        assert expected in message
    assert isinstance(caught.value, FileNotFoundError)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server serving ``tmp_path/served``; stops at teardown or after 60 s."""
    served = tmp_path / "served"
    _write_fixture(served)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    timer = threading.Timer(60.0, server.shutdown)
    timer.daemon = True
    timer.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    timer.cancel()
    server.shutdown()
    server.server_close()


def test_download_true_fetches_the_four_files(file_server: str, tmp_path: Path) -> None:
    served = tmp_path / "served"
    md5 = {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in IDX_FILES}
    root = tmp_path / "downloaded"
    dataset = _dataset(root, tmp_path / "cache", download=True, url=file_server, md5=md5)
    layout = dataset.prepare(2)
    for name in IDX_FILES:
        assert (root / "FashionMNIST/raw" / name).read_bytes() == (served / name).read_bytes()
    assert len(_pngs(layout.root / "test/corrupted")) == PER_CLASS // 2


def test_download_with_wrong_md5_is_refused(file_server: str, tmp_path: Path) -> None:
    root = tmp_path / "downloaded"
    wrong = {name: "0" * 32 for name in IDX_FILES}
    with pytest.raises(ValueError, match="md5 mismatch.*expected 0{32}"):
        _dataset(root, tmp_path / "cache", download=True, url=file_server, md5=wrong).prepare(2)
    assert not list((root / "FashionMNIST/raw").glob("*.gz"))


@pytest.mark.skipif(
    not all((DEBIAN_DIR / name).is_file() for name in IDX_FILES),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_files_category_3(tmp_path: Path) -> None:
    assert read_idx(DEBIAN_DIR / "train-images-idx3-ubyte.gz", 3).shape == (60000, 28, 28)
    test_labels = read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz", 1)
    assert test_labels.shape == (10000,) and np.bincount(test_labels).tolist() == [1000] * 10

    layout = FashionMNIST(root=DEBIAN_DIR, cache_dir=tmp_path).prepare(3)
    counts = {
        folder: len(_pngs(layout.root / folder))
        for folder in ("train/good", "test/good", "test/corrupted", "ground_truth/corrupted")
    }
    assert counts == {
        "train/good": 6000,
        "test/good": 500,
        "test/corrupted": 500,
        "ground_truth/corrupted": 500,
    }
