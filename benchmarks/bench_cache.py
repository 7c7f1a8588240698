"""The decoded-image cache: what a job saves on loading its category, and decodes over a 10-job sweep.

    python -m benchmarks.bench_cache            # prints the rows

The category is generated once into a temporary folder in the MVTec layout (``dataset=folder``): RGB PNGs
of a realistic size (1024² by default, MVTec AD's most common; smooth texture plus sensor-like noise, so
they compress like photographs, not like flat colour) with defect masks.

- Load time, one process: ``AnomalyDataModule.setup()`` (list, decode or map, resize to 256², split) with
  the cache turned off (every job's cost before the cache, and still a cold job's) against the same call
  reading the filled cache (every later job's cost); ``repeats`` alternated calls of each after one
  untimed call, median. Also documented: the first job's cost, decoding plus writing the entry.
- Sweep: ``train_job`` of a 10-job layer sweep (``layer=encoder.0`` … ``encoder.9``, the basic launcher's
  way: one job after another) on that category with an empty cache, counting the source images decoded
  (``disk_cache.STATS``); the reference is one decode of the category. The jobs train tiny (64² input,
  one epoch, no selection): the decodes, not the training, are measured.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_attn.data.disk_cache import STATS
from anomaly_attn.data.folder import Folder
from anomaly_attn.training.datamodule import AnomalyDataModule

CATEGORY = "part"


def make_category(
    root: Path, size: int = 1024, n_train: int = 24, n_test_good: int = 4, n_defect: int = 8, seed: int = 0
) -> Path:
    """Write ``root/part/{train/good, test/good, test/defect, ground_truth/defect}`` and return ``root``."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size, dtype=np.float32)

    def photo() -> np.ndarray:
        fy, fx, phase = rng.uniform(2, 12), rng.uniform(2, 12), rng.uniform(0, 6.3, size=3)
        base = np.sin(2 * np.pi * fy * axis)[:, None] + np.cos(2 * np.pi * fx * axis)[None, :]
        channels = [120 + 40 * np.sin(base + p) for p in phase]
        noisy = np.stack(channels, axis=-1) + rng.normal(0.0, 6.0, size=(size, size, 3))
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def save(pixels: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    category = root / CATEGORY
    for index in range(n_train):
        save(photo(), category / "train" / "good" / f"{index:03d}.png")
    for index in range(n_test_good):
        save(photo(), category / "test" / "good" / f"{index:03d}.png")
    for index in range(n_defect):
        image, mask = photo(), np.zeros((size, size), np.uint8)
        row, col = rng.integers(0, size * 3 // 4, size=2)
        mask[row : row + size // 8, col : col + size // 6] = 255
        image[mask > 0] = (30, 30, 30)
        save(image, category / "test" / "defect" / f"{index:03d}.png")
        save(mask, category / "ground_truth" / "defect" / f"{index:03d}_mask.png")
    return root


def _setup_seconds(dataset: Folder) -> float:
    start = time.perf_counter()
    AnomalyDataModule(dataset, CATEGORY).setup()
    return time.perf_counter() - start


def load_rows(
    root: Path, cache_dir: Path, image_size: int, repeats: int, n_images: int, size: int
) -> list[dict]:
    """Cold (cache off) against warm (cache filled) category loads, alternated, in this process."""
    options = {"root": root, "image_size": image_size, "channels": 3, "num_workers": 0}
    off = Folder(**options, cache={"enabled": False})
    on = Folder(**options, cache={"enabled": True, "dir": str(cache_dir)})
    first_job = _setup_seconds(on)  # decodes and writes the entries
    seconds: dict[str, list[float]] = {"cold": [], "warm": []}
    _setup_seconds(off)  # one untimed call of each: imports, allocator
    _setup_seconds(on)
    for _ in range(repeats):
        seconds["cold"].append(_setup_seconds(off))
        seconds["warm"].append(_setup_seconds(on))
    cold, warm = statistics.median(seconds["cold"]), statistics.median(seconds["warm"])
    what = f"{n_images} PNGs of {size}² RGB (+ masks) → {image_size}²"
    return [
        {
            "benchmark": f"load one category from the decoded-image cache (a later job of a sweep): {what}; "
            f"saves {cold - warm:.2f} s per job",
            "ours": warm,
            "unit": "s",
            "reference": "decoding and resizing it (cache off, or a cold cache)",
            "reference_value": cold,
            "ratio": warm / cold,
            "target": "<= 0.1",
            "passed": warm / cold <= 0.1,
        },
        {
            "benchmark": f"the first job of a sweep: decode and write the cache entries, {what} (one run)",
            "ours": first_job,
            "unit": "s",
            "reference": "decoding and resizing it (cache off)",
            "reference_value": cold,
            "ratio": first_job / cold,
            "target": "documented",
            "passed": None,
        },
    ]


def sweep_row(root: Path, cache_dir: Path, out_dir: Path, n_jobs: int, n_images: int) -> dict:
    """Source images decoded by ``n_jobs`` tiny training jobs (one layer each) on the category."""
    from anomaly_attn.jobs.train import train_job
    from benchmarks.bench_train import compose_config

    before = STATS["images_decoded"]
    for index in range(n_jobs):
        overrides = [
            "dataset=folder",
            f"dataset.root={root}",
            f"category={CATEGORY}",
            "dataset.image_size=64",
            "dataset.num_workers=0",
            "dataset.batch_size=16",
            f"dataset.cache.dir={cache_dir}",
            f"layer=encoder.{index}",
            "trainer.max_epochs=1",
            "validation=none",
            "selection.map=fixed",
            "logger=none",
            "visualization.max_overlays=0",
        ]
        train_job(compose_config(overrides), out_dir / f"job{index}")
    decoded = STATS["images_decoded"] - before
    return {
        "benchmark": f"source images decoded by a {n_jobs}-job layer sweep on one category "
        f"({n_images} images; jobs one after another, cache empty at the start)",
        "ours": float(decoded),
        "unit": "images",
        "reference": "one decode of the category",
        "reference_value": float(n_images),
        "ratio": decoded / n_images,
        "target": "<= 1",
        "passed": decoded <= n_images,
    }


def run(
    size: int = 1024,
    n_train: int = 24,
    n_test_good: int = 4,
    n_defect: int = 8,
    image_size: int = 256,
    repeats: int = 3,
    sweep_jobs: int = 10,
) -> list[dict]:
    """Rows ``{benchmark, ours, unit, reference, reference_value, ratio, target, passed}``: the load time
    with the cache against without (target ratio ≤ 0.1), the first job's cost (documented), and with
    ``sweep_jobs > 0`` the decodes of a sweep against one decode of the category (target ≤ 1)."""
    n_images = n_train + n_test_good + n_defect
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as folder:
        work = Path(folder)
        root = make_category(work / "data", size, n_train, n_test_good, n_defect)
        rows = load_rows(root, work / "cache_load", image_size, repeats, n_images, size)
        if sweep_jobs > 0:
            rows.append(sweep_row(root, work / "cache_sweep", work / "runs", sweep_jobs, n_images))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
