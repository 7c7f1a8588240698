"""Tiny dataset trees in the real MVTec AD, BTAD and ELPV layouts, for tests that must not download anything.

``make_mvtec_tree`` writes all 15 MVTec categories (with their real defect-type names and their
grayscale/RGB modes), ``make_btad_tree`` the three BTAD products (with their .png/.bmp mix and the zip's
``BTech_Dataset_transformed`` top folder). Images are seeded noise; an anomalous image carries a bright
square exactly where its mask is 255, so a test can check that masks line up with their images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MVTEC_DEFECT_TYPES: dict[str, tuple[str, ...]] = {
    "bottle": ("broken_large", "broken_small", "contamination"),
    "cable": ("bent_wire", "cable_swap", "combined", "cut_inner_insulation", "missing_wire"),
    "capsule": ("crack", "faulty_imprint", "poke", "scratch", "squeeze"),
    "carpet": ("color", "cut", "hole", "metal_contamination", "thread"),
    "grid": ("bent", "broken", "glue", "metal_contamination", "thread"),
    "hazelnut": ("crack", "cut", "hole", "print"),
    "leather": ("color", "cut", "fold", "glue", "poke"),
    "metal_nut": ("bent", "color", "flip", "scratch"),
    "pill": ("color", "combined", "contamination", "crack", "faulty_imprint", "pill_type", "scratch"),
    "screw": ("manipulated_front", "scratch_head", "scratch_neck", "thread_side", "thread_top"),
    "tile": ("crack", "glue_strip", "gray_stroke", "oil", "rough"),
    "toothbrush": ("defective",),
    "transistor": ("bent_lead", "cut_lead", "damaged_case", "misplaced"),
    "wood": ("color", "combined", "hole", "liquid", "scratch"),
    "zipper": ("broken_teeth", "combined", "fabric_border", "fabric_interior", "rough", "split_teeth"),
}
"""MVTec AD defect folders per category (a subset for cable, pill, zipper, enough to be realistic)."""

MVTEC_GRAYSCALE: frozenset[str] = frozenset({"grid", "screw", "zipper"})
"""MVTec categories stored as single-channel images."""

BTAD_EXTENSIONS: dict[str, tuple[str, str]] = {
    "01": (".bmp", ".png"),
    "02": (".png", ".png"),
    "03": (".bmp", ".bmp"),
}
"""BTAD (image extension, mask extension) per product."""


def _noise_image(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(40, 160, size=shape, dtype=np.uint8)


def _defect_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 0/255 mask holding one square of a quarter of the image side at a random place."""
    side = max(2, size // 4)
    row, col = rng.integers(0, size - side + 1, size=2)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[row : row + side, col : col + side] = 255
    return mask


def _write_category(
    category_dir: Path,
    rng: np.random.Generator,
    size: int,
    channels: int,
    normal_dir: str,
    defect_types: Iterable[str],
    n_train: int,
    n_test_good: int,
    n_per_defect: int,
    image_ext: str,
    mask_ext: str,
    mask_suffix: str,
    name_digits: int,
) -> None:
    def save(pixels: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)

    for index in range(n_train):
        save(
            _noise_image(rng, size, channels),
            category_dir / "train" / normal_dir / f"{index:0{name_digits}d}{image_ext}",
        )
    for index in range(n_test_good):
        save(
            _noise_image(rng, size, channels),
            category_dir / "test" / normal_dir / f"{index:0{name_digits}d}{image_ext}",
        )
    for defect_type in defect_types:
        for index in range(n_per_defect):
            image = _noise_image(rng, size, channels)
            mask = _defect_mask(rng, size)
            image[mask > 0] = 250
            stem = f"{index:0{name_digits}d}"
            save(image, category_dir / "test" / defect_type / f"{stem}{image_ext}")
            save(mask, category_dir / "ground_truth" / defect_type / f"{stem}{mask_suffix}{mask_ext}")


def make_mvtec_tree(
    root: Path,
    categories: Iterable[str] | None = None,
    size: int = 32,
    n_train: int = 4,
    n_test_good: int = 2,
    n_per_defect: int = 1,
    seed: int = 0,
) -> Path:
    """Write MVTec AD categories (default: all 15) under ``root`` in the official layout; return ``root``.

    ``CAT/train/good/000.png``, ``CAT/test/good/000.png``, ``CAT/test/DEFECT/000.png`` and
    ``CAT/ground_truth/DEFECT/000_mask.png`` (0/255); grid, screw and zipper are grayscale, the rest RGB.
    """
    rng = np.random.default_rng(seed)
    for category in categories if categories is not None else MVTEC_DEFECT_TYPES:
        _write_category(
            Path(root) / category,
            rng,
            size,
            channels=1 if category in MVTEC_GRAYSCALE else 3,
            normal_dir="good",
            defect_types=MVTEC_DEFECT_TYPES[category],
            n_train=n_train,
            n_test_good=n_test_good,
            n_per_defect=n_per_defect,
            image_ext=".png",
            mask_ext=".png",
            mask_suffix="_mask",
            name_digits=3,
        )
    return Path(root)


def make_btad_tree(
    root: Path,
    categories: Iterable[str] | None = None,
    size: int = 32,
    n_train: int = 4,
    n_test_good: int = 2,
    n_per_defect: int = 2,
    top_folder: bool = True,
    seed: int = 0,
) -> Path:
    """Write BTAD products (default: 01, 02, 03) as the distributed zip unpacks them; return ``root``.

    ``[BTech_Dataset_transformed/]NN/train/ok/0000.EXT``, ``NN/test/{ok,ko}/0000.EXT`` and
    ``NN/ground_truth/ko/0000.EXT`` (masks named like their images, 0/255), with the products' extensions
    (``BTAD_EXTENSIONS``: 03 is all .bmp). ``top_folder=False`` puts the products directly in ``root``.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "BTech_Dataset_transformed" if top_folder else Path(root)
    for category in categories if categories is not None else BTAD_EXTENSIONS:
        image_ext, mask_ext = BTAD_EXTENSIONS[category]
        _write_category(
            base / category,
            rng,
            size,
            channels=3,
            normal_dir="ok",
            defect_types=("ko",),
            n_train=n_train,
            n_test_good=n_test_good,
            n_per_defect=n_per_defect,
            image_ext=image_ext,
            mask_ext=mask_ext,
            mask_suffix="",
            name_digits=4,
        )
    return Path(root)


ELPV_COUNTS: dict[str, dict[str, int]] = {
    "mono": {"0.0": 8, "0.3333333333333333": 2, "0.6666666666666666": 1, "1.0": 3},
    "poly": {"0.0": 12, "0.3333333333333333": 1, "0.6666666666666666": 2, "1.0": 4},
}
"""Cells per type and probability (as labels.csv writes it) of ``make_elpv_tree``."""


def make_elpv_tree(root: Path, size: int = 24, counts: dict[str, dict[str, int]] = ELPV_COUNTS) -> Path:
    """ELPV as the package (or a clone) holds it: ``root/labels.csv`` (whitespace-separated
    ``images/cellNNNN.png  PROBABILITY  TYPE``, the types interleaved as in the real file) and
    ``root/images/cellNNNN.png`` (8-bit gray noise; defective cells carry a bright square)."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cells = [(cell_type, p) for cell_type, by_p in counts.items() for p, n in by_p.items() for _ in range(n)]
    order = rng.permutation(len(cells))
    lines = []
    for number, index in enumerate(order, start=1):
        cell_type, probability = cells[index]
        image = _noise_image(rng, size, 1)
        if float(probability) > 0:
            image[size // 4 : size // 2, size // 4 : size // 2] = 250
        name = f"images/cell{number:04d}.png"
        Image.fromarray(image).save(root / name)
        lines.append(f"{name}  {probability:<18}  {cell_type}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def pixel_keys(node: object, path: str = "") -> list[str]:
    """Dotted keys starting with ``pixel_`` outside the validation, selection and threshold blocks (which
    describe the synthetic validation set, not the test set)."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if key not in ("validation", "selection", "thresholds"):
            found += [path + key] if key.startswith("pixel_") else pixel_keys(value, f"{path}{key}.")
    return found


def snapshot_tree(root: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of everything under ``root`` (to prove it unchanged)."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
    }


def all_masked(datamodule) -> bool:
    """Whether every anomalous test image of a set-up datamodule has a mask."""
    datamodule.setup()
    return all(r.mask_path is not None for r in datamodule.test_set.records if r.label == 1)


def planted_set(
    count: int = 8, size: int = 64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` smooth normal images, then the same images with a bright 10×10 square (label 1, mask)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.nn.functional.avg_pool2d(torch.rand(count, 1, size, size, generator=generator), 5, 1, 2)
    anomalous = clean.clone()
    masks = torch.zeros(2 * count, 1, size, size)
    for index in range(count):
        row, col = 8 + (index * 7) % (size - 20), 10 + (index * 11) % (size - 24)
        anomalous[index, :, row : row + 10, col : col + 10] = 1.0
        masks[count + index, :, row : row + 10, col : col + 10] = 1.0
    labels = torch.cat([torch.zeros(count), torch.ones(count)]).long()
    return torch.cat([clean, anomalous]), masks, labels
