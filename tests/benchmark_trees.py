"""Tiny VisA, MPDD and MVTec AD 2 trees in the layouts their archives unpack to (seeded noise images).

``make_visa_tree`` writes JPEG images, small-integer masks (1, 2: one value per defect region, as VisA
stores them), each category's ``image_anno.csv`` and the one-class split file ``split_csv/1cls.csv``, whose
train/test assignment does not follow the folders (a ``Normal/`` image can be a test image). An anomalous
image carries bright pixels exactly where its mask is non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.fixtures import _noise_image, _write_category

VISA_DEFECT_LABELS: tuple[str, ...] = ("chunk of wax missing", "Weird wick, damaged corner")
"""``image_anno.csv`` labels of the anomalous images 0 and 1 of every VisA category."""
VISA_DEFECT_TYPES: tuple[str, ...] = ("chunk_of_wax_missing", "damaged_corner+weird_wick")
"""The defect types the loader derives from ``VISA_DEFECT_LABELS``."""

MPDD_DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "bracket_black": ("hole", "scratches"),
    "bracket_brown": ("bend_and_parts_mismatch", "parts_mismatch"),
    "bracket_white": ("defective_painting", "scratches"),
    "connector": ("parts_mismatch",),
    "metal_plate": ("major_rust", "scratches", "total_rust"),
    "tubes": ("anomalous",),
}


def _save(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def visa_mask(height: int, width: int) -> np.ndarray:
    """Two defect regions labelled 1 and 2 (VisA's encoding), the rest 0."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2 : height // 3, 2 : width // 3] = 1
    mask[height // 2 : height - 2, width // 2 : width - 2] = 2
    return mask


def make_visa_tree(
    root: Path,
    categories: Iterable[str],
    height: int = 32,
    width: int = 40,
    n_train: int = 4,
    n_test_good: int = 2,
    n_anomalous: int = 2,
    top_folder: str | None = None,
    seed: int = 0,
) -> Path:
    """Write VisA categories under ``root`` (or ``root/top_folder``) as the archive unpacks; return ``root``.

    Normal images ``CAT/Data/Images/Normal/0000.JPG ...``: the first ``n_test_good`` are test images in
    the split file, the rest training images. Anomalous ``CAT/Data/Images/Anomaly/000.JPG`` with masks
    ``CAT/Data/Masks/Anomaly/000.png`` holding 0, 1, 2.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / top_folder if top_folder else Path(root)
    rows = ["object,split,label,image,mask"]
    for category in categories:
        annotations = ["image,label,mask"]
        for index in range(n_train + n_test_good):
            relative = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            _save(rng.integers(40, 160, size=(height, width, 3), dtype=np.uint8), base / relative)
            split = "test" if index < n_test_good else "train"
            rows.append(f"{category},{split},normal,{relative},")
            annotations.append(f"{relative},normal,")
        for index in range(n_anomalous):
            relative = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            pixels = rng.integers(40, 160, size=(height, width, 3), dtype=np.uint8)
            mask = visa_mask(height, width)
            pixels[mask > 0] = 250
            _save(pixels, base / relative)
            _save(mask, base / mask_relative)
            rows.append(f"{category},test,anomaly,{relative},{mask_relative}")
            label = VISA_DEFECT_LABELS[index % len(VISA_DEFECT_LABELS)]
            annotations.append(f'{relative},"{label}",{mask_relative}')
        (base / category / "image_anno.csv").write_text("\n".join(annotations) + "\n")
    (base / "split_csv").mkdir(parents=True, exist_ok=True)
    (base / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return Path(root)


def make_mpdd_tree(
    root: Path, categories: Iterable[str] | None = None, size: int = 32, seed: int = 0
) -> Path:
    """Write MPDD parts (default: all six) in the MVTec layout with their defect folders; return ``root``."""
    rng = np.random.default_rng(seed)
    for category in categories if categories is not None else MPDD_DEFECT_TYPES:
        _write_category(
            Path(root) / category,
            rng,
            size,
            channels=3,
            normal_dir="good",
            defect_types=MPDD_DEFECT_TYPES[category],
            n_train=4,
            n_test_good=2,
            n_per_defect=1,
            image_ext=".png",
            mask_ext=".png",
            mask_suffix="_mask",
            name_digits=3,
        )
    return Path(root)


def make_mvtec_ad2_tree(
    root: Path,
    categories: Iterable[str],
    size: int = 32,
    n_train: int = 4,
    n_val: int = 3,
    n_test_good: int = 2,
    n_bad: int = 2,
    seed: int = 0,
) -> Path:
    """Write MVTec AD 2 categories as the archive unpacks them, with unlabelled private test sets."""
    rng = np.random.default_rng(seed)
    for category in categories:
        folder = Path(root) / category
        for subfolder, count in [
            ("train/good", n_train),
            ("validation/good", n_val),
            ("test_public/good", n_test_good),
        ]:
            for index in range(count):
                _save(_noise_image(rng, size, 3), folder / subfolder / f"{index:03d}_regular.png")
        for index in range(n_bad):
            pixels = _noise_image(rng, size, 3)
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[: size // 4, : size // 4] = 255
            pixels[mask > 0] = 250
            _save(pixels, folder / "test_public" / "bad" / f"{index:03d}_overexposed.png")
            _save(mask, folder / "test_public" / "ground_truth" / "bad" / f"{index:03d}_overexposed_mask.png")
        for private in ("test_private", "test_private_mixed"):
            for index in range(2):
                _save(_noise_image(rng, size, 3), folder / private / f"{index:03d}_mixed.png")
    return Path(root)
