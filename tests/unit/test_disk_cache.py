"""The persistent cache of decoded images: keys, invalidation, validation, eviction, clearing, concurrency."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import anomaly_attn.data.cache_key as cache_key
import anomaly_attn.data.dataset as dataset_module
from anomaly_attn.__main__ import main as package_main
from anomaly_attn.data.cache_key import entry_name, make_key
from anomaly_attn.data.dataset import ImageCache
from anomaly_attn.data.disk_cache import (
    STATS,
    CacheSettings,
    DecodedImageStore,
    cache_root,
)
from anomaly_attn.data.errors import CorruptImageError
from anomaly_attn.data.layout import read_mvtec_layout
from anomaly_attn.data.mvtec import MVTec
from anomaly_attn.training.datamodule import AnomalyDataModule
from tests.fixtures import make_mvtec_tree


def _mvtec(root: Path, store_dir: Path | None, **options) -> MVTec:
    cache = {"enabled": store_dir is not None, "dir": str(store_dir) if store_dir else None}
    return MVTec(root=root, image_size=options.pop("image_size", 20), cache=cache, **options)


def _arrays(datamodule: AnomalyDataModule) -> dict[str, np.ndarray]:
    """Every image and mask the datamodule serves, by file, as plain arrays."""
    out = {}
    for split in (datamodule.train_set, datamodule.val_set, datamodule.test_set):
        for record in split.records:
            out[str(record.path)] = np.array(datamodule.cache.image(record))
            out[f"{record.path}#mask"] = np.array(datamodule.cache.mask(record))
    return out


def _n_images(root: Path, category: str) -> int:
    """Source images (not masks) of a category."""
    return len([*(root / category / "train").rglob("*.png"), *(root / category / "test").rglob("*.png")])


def _setup(dataset: MVTec, category: str) -> tuple[AnomalyDataModule, int]:
    """A set-up datamodule and how many source images it decoded."""
    before = STATS["images_decoded"]
    datamodule = AnomalyDataModule(dataset, category)
    datamodule.setup()
    return datamodule, STATS["images_decoded"] - before


def test_a_second_load_decodes_nothing_and_serves_identical_arrays(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["bottle"], size=40, n_train=6)
    store_dir = tmp_path / "cache"
    uncached, decoded_plain = _setup(_mvtec(root, None), "bottle")
    cold, decoded_cold = _setup(_mvtec(root, store_dir), "bottle")
    warm, decoded_warm = _setup(_mvtec(root, store_dir), "bottle")
    assert decoded_plain == decoded_cold == _n_images(root, "bottle") == 6 + 2 + 3  # 3 defect types
    assert decoded_warm == 0
    entries = sorted(p.name for p in (store_dir / "decoded_images").iterdir())
    assert len(entries) == 2 and entries[0].startswith("bottle-test-20px-3c-")
    assert entries[1].startswith("bottle-train-20px-3c-")
    reference = _arrays(uncached)
    for served in (_arrays(cold), _arrays(warm)):
        assert served.keys() == reference.keys()
        for name, array in reference.items():
            assert served[name].dtype == np.uint8 and np.array_equal(served[name], array), name
    masks = [v for k, v in reference.items() if k.endswith("#mask")]
    assert any(mask.any() for mask in masks) and set(np.unique(np.stack(masks)).tolist()) == {0, 1}
    # The entry is a plain .npz: inspectable with numpy.
    with np.load(store_dir / "decoded_images" / entries[1]) as entry:
        assert entry["images"].shape == (6, 20, 20, 3) and entry["masks"].shape == (0, 20, 20)
    # Served samples are writable tensors (copy-on-write maps), the loaders run unchanged.
    batch = next(iter(warm.test_dataloader()))
    assert batch["image"].shape == (5, 3, 20, 20) and batch["mask"].sum() > 0


def test_a_disabled_cache_writes_nothing(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["wood"], size=16)
    dataset = MVTec(root=root, image_size=8, cache={"enabled": False, "dir": str(tmp_path / "cache")})
    _, decoded = _setup(dataset, "wood")
    _, decoded_again = _setup(dataset, "wood")
    assert decoded == decoded_again == _n_images(root, "wood")
    assert not (tmp_path / "cache").exists()


def test_the_key_follows_the_source_files_and_the_settings(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["tile"], size=16)
    records = read_mvtec_layout(MVTec(root=root).prepare("tile")).test
    origin = {"root": str(root / "tile"), "category": "tile", "split": "test"}
    key = make_key(records, origin, 8, 3)
    assert make_key(records, origin, 8, 3) == key
    variants = [
        make_key(records, origin, 16, 3),
        make_key(records, origin, 8, 1),
        make_key(records, {**origin, "split": "train"}, 8, 3),
        make_key(records, {**origin, "root": "/elsewhere"}, 8, 3),
        make_key(records[:-1], origin, 8, 3),
    ]
    image = records[0].path
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))  # touched: same bytes, new mtime
    variants.append(make_key(records, origin, 8, 3))
    mask = next(r.mask_path for r in records if r.mask_path is not None)
    mask.write_bytes(mask.read_bytes() + b"\0")  # a mask changed (size)
    variants.append(make_key(records, origin, 8, 3))
    names = {entry_name(k) for k in [key, *variants]}
    assert len(names) == len(variants) + 1
    assert {row[6] for row in key["files"] if row[3] is not None} == {dataset_module.MASK_THRESHOLD}
    assert cache_key.MASK_THRESHOLD == dataset_module.MASK_THRESHOLD


def test_a_changed_source_image_is_decoded_again_not_served_stale(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["grid"], size=16)  # grayscale
    store_dir = tmp_path / "cache"
    first, _ = _setup(_mvtec(root, store_dir, image_size=16), "grid")
    changed = root / "grid" / "train" / "good" / "000.png"
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(changed)
    second, decoded = _setup(_mvtec(root, store_dir, image_size=16), "grid")
    assert decoded == 4  # the training split again; the test split is still cached
    record = next(r for r in [*second.train_set.records, *second.val_set.records] if r.path == changed)
    assert (second.cache.image(record) == 7).all()
    assert len(list((store_dir / "decoded_images").iterdir())) == 3  # the old train entry waits for LRU


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage"])
def test_a_corrupt_entry_is_a_miss_and_is_rewritten(tmp_path: Path, damage: str, caplog) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["cable"], size=24)
    store_dir = tmp_path / "cache"
    reference = _arrays(_setup(_mvtec(root, store_dir), "cable")[0])
    entry = next((store_dir / "decoded_images").glob("cable-train-*"))
    data = bytearray(entry.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF  # inside images.npy
    elif damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data = bytearray(b"not a zip at all")
    entry.write_bytes(bytes(data))
    corrupt_before = STATS["corrupt"]
    datamodule, decoded = _setup(_mvtec(root, store_dir), "cable")
    assert decoded == 4 and STATS["corrupt"] == corrupt_before + 1
    assert str(entry) in caplog.text and "decoding again" in caplog.text
    served = _arrays(datamodule)
    assert all(np.array_equal(served[k], v) for k, v in reference.items())
    # Rewritten: the next load is a valid hit.
    assert _setup(_mvtec(root, store_dir), "cable")[1] == 0


def _fake_key(name: str, count: int = 10, size: int = 100) -> dict:
    return {"category": name, "split": "train", "image_size": size, "channels": 1,
            "files": [[f"/{name}/{i}.png", 1, 1, None, None, None, None] for i in range(count)]}


def _images(count: int = 10, size: int = 100) -> list[np.ndarray]:
    return [np.full((size, size, 1), i, np.uint8) for i in range(count)]


def test_eviction_removes_the_least_recently_used_entries(tmp_path: Path) -> None:
    store = DecodedImageStore(tmp_path, max_bytes=250_000)  # two entries of ~100 kB fit, three do not
    paths = {}
    for age, name in enumerate(["a", "b"]):
        paths[name] = store.write(_fake_key(name), _images(), [])
        os.utime(paths[name], (1000 + age, 1000 + age))  # a older than b
    assert store.read(_fake_key("a")) is not None  # a hit makes a the most recently used
    paths["c"] = store.write(_fake_key("c"), _images(), [])
    assert paths["a"].exists() and not paths["b"].exists() and paths["c"].exists()
    assert [row["name"] for row in store.info()["entries"]] == [paths["a"].name, paths["c"].name]
    # An entry larger than the whole limit is not stored (and evicts nothing).
    assert store.write(_fake_key("huge", count=30), _images(30), []) is None
    assert paths["a"].exists() and paths["c"].exists()


def test_the_cli_shows_and_clears_only_the_cache(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_CACHE_DIR", str(tmp_path))
    store = DecodedImageStore(cache_root())
    written = store.write(_fake_key("carpet"), _images(), [])
    data = tmp_path / "mvtec_anomaly_detection" / "carpet.png"  # the data folder may be the same
    data.parent.mkdir()
    data.write_bytes(b"data")
    assert package_main(["cache", "--info"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "decoded_images") in out and written.name in out and "1 cached splits" in out
    assert package_main(["cache", "--clear"]) == 0
    assert "removed 1 cached splits" in capsys.readouterr().out
    assert not written.exists() and data.exists()
    assert package_main(["cache", "--info", "--dir", str(tmp_path / "other")]) == 0
    assert "0 cached splits" in capsys.readouterr().out
    assert package_main([]) == 0
    assert "python -m anomaly_attn cache --info | --clear" in capsys.readouterr().out


def test_cache_location_and_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANOMALY_ATTN_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "env" and cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("ANOMALY_ATTN_CACHE_DIR")
    assert cache_root() == tmp_path / "xdg" / "anomaly_attn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "anomaly_attn"
    assert CacheSettings.from_config({"enabled": "false"}).store() is None
    assert CacheSettings.from_config(None) == CacheSettings(enabled=True, max_gb=5.0, dir=None)
    with pytest.raises(ValueError, match="dataset.cache.max_gb must be positive.*enabled=false"):
        CacheSettings.from_config({"max_gb": 0})
    with pytest.raises(ValueError, match="unknown key.*dataset.cache.size.*valid keys: enabled, max_gb, dir"):
        CacheSettings.from_config({"size": 3})
    with pytest.raises(ValueError, match="dataset.cache.enabled='maybe' is not a boolean"):
        MVTec(root=tmp_path, cache={"enabled": "maybe"})


def _write_and_read_repeatedly(root: str, store_dir: str, barrier, rounds: int, queue) -> None:
    """One of two processes: at the same moment as the other, fill the entry as a job does (both miss,
    decode and write it), then store and read it ``rounds`` times while the other does the same; every
    read must be complete and identical to what was decoded."""
    corrupt_before = STATS["corrupt"]  # forked: the parent's counts come along
    records = read_mvtec_layout(MVTec(root=root).prepare("bottle")).train
    origin = {"root": root, "category": "bottle", "split": "train"}
    store = DecodedImageStore(store_dir)
    barrier.wait()
    filled = ImageCache(64, 3, store)
    filled.load(records, origin=origin)
    images = [filled.image(record) for record in records]
    key = make_key(records, origin, 64, 3)
    torn = 0
    for _ in range(rounds):
        store.write(key, images, [])
        split = store.read(key)
        if split is None or not all(np.array_equal(a, b) for a, b in zip(split.images, images, strict=True)):
            torn += 1
    cache = ImageCache(64, 3, store)  # a later job reading through the store
    cache.load(records, origin=origin)
    queue.put((torn, np.stack([np.array(cache.image(r)) for r in records]).tobytes(),
               STATS["corrupt"] - corrupt_before))


def test_two_processes_filling_one_entry_never_see_a_torn_entry(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["bottle"], size=128, n_train=24)
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_write_and_read_repeatedly, args=(str(root), str(tmp_path / "cache"), barrier, 15, queue)
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert [torn for torn, _, _ in results] == [0, 0]
    assert [corrupt for _, _, corrupt in results] == [0, 0]
    assert results[0][1] == results[1][1]
    leftovers = [p.name for p in (tmp_path / "cache" / "decoded_images").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith("bottle-train-64px-3c-")  # no temp files left
    decoded = ImageCache(64, 3)
    records = read_mvtec_layout(MVTec(root=root).prepare("bottle")).train
    decoded.load(records)
    expected = np.stack([decoded.image(r) for r in records]).tobytes()
    assert results[0][1] == expected


def test_files_skipped_as_corrupt_stay_skipped_on_a_hit_and_fail_without_skip_corrupt(
    tmp_path: Path, caplog
) -> None:
    root = make_mvtec_tree(tmp_path / "data", categories=["carpet"], size=16, n_train=5)
    corrupt = root / "carpet" / "train" / "good" / "002.png"
    corrupt.write_bytes(b"not a png")
    store_dir = tmp_path / "cache"
    first, _ = _setup(_mvtec(root, store_dir, skip_corrupt=True, val_fraction=0.0), "carpet")
    caplog.clear()
    second, decoded = _setup(_mvtec(root, store_dir, skip_corrupt=True, val_fraction=0.0), "carpet")
    assert decoded == 0 and str(corrupt) in caplog.text and "as when cached" in caplog.text
    assert [r.path for r in second.train_set.records] == [r.path for r in first.train_set.records]
    assert len(second.train_set) == 4 and corrupt not in [r.path for r in second.train_set.records]
    with pytest.raises(CorruptImageError, match=str(corrupt)):
        _setup(_mvtec(root, store_dir, val_fraction=0.0), "carpet")  # the entry is no excuse
