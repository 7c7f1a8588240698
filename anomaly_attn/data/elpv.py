"""ELPV, electroluminescence images of solar cells (Buerhop-Lutz et al. 2018, Deitsch et al. 2019): 2624
cells of 300×300 8-bit gray, each with the defect probability experts gave it (0, 1/3, 2/3 or 1) and its
type, monocrystalline (``mono``, 1074 cells) or polycrystalline (``poly``, 1550): the two categories.

The data come from the ``elpv-dataset`` package (``pip install 'anomaly_attn[elpv]'``), found with
``importlib.util.find_spec`` without importing it, or from ``dataset.root``: a folder holding
``labels.csv`` and ``images/`` (a clone of the dataset; it wins when given). ``labels.csv`` is
whitespace-separated, one cell a line: ``images/cell0001.png  1.0  mono``. Nothing is copied or written.

Split (image level only: ELPV has no pixel masks). Normal = probability 0, anomalous = probability 1. A
seeded ``train_fraction`` (0.75) of a category's normals, ``round(0.75·N)``, is for training (the run's
validation normals are then held out of them, as for every dataset); the other normals and every
probability-1 cell are tested. ``split_seed`` (0) fixes that split for every run seed, so runs of several
seeds score the same test images: mono 441 training / 147 normal + 313 defective test cells, poly 690 /
230 + 402. The uncertain cells (1/3, 2/3) are left out (``uncertain=exclude``), or tested as anomalous
(``uncertain=test``) with the defect types ``uncertain_p033`` / ``uncertain_p067``, so that ``per_defect``
gives each level's AUROC against the same normals (``defective``: probability 1, the default split's
number). Every record carries its probability: ``per_image_scores.csv`` has a ``defect_probability`` column.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from anomaly_attn.data.errors import LayoutError, MissingDataError
from anomaly_attn.data.layout import NORMAL_DEFECT_TYPE, CategoryLayout, LayoutDataset, Record, SplitRecords

log = logging.getLogger(__name__)

ELPV_CATEGORIES: tuple[str, ...] = ("mono", "poly")
ELPV_PACKAGE = "elpv_dataset"
"""The module the ``elpv-dataset`` package installs; its ``data/`` folder holds labels.csv and images/."""
LABELS_FILE = "labels.csv"
UNCERTAIN_OPTIONS: tuple[str, ...] = ("exclude", "test")
DEFECTIVE = "defective"
"""Defect type of the probability-1 cells."""
UNCERTAIN_TYPES = {1: "uncertain_p033", 2: "uncertain_p067"}
"""Defect types of the uncertain cells with ``uncertain=test``, by probability in thirds."""
ROOT_SUBFOLDERS: tuple[str, ...] = ("data", "src/elpv_dataset/data", "elpv_dataset/data")
"""Where labels.csv may sit below ``dataset.root`` in a clone of the dataset (the root itself first)."""
INSTALL_HINT = "pip install 'anomaly_attn[elpv]' (or pip install elpv-dataset)"


class Cell(NamedTuple):
    """One line of ``labels.csv``: the image, its defect probability (in thirds: 0-3) and its type."""

    path: Path
    probability: float
    thirds: int
    cell_type: str


def package_data_dir() -> Path | None:
    """The ``data/`` folder of the installed ``elpv_dataset`` package (holding labels.csv), or ``None``.
    Found by ``find_spec``, which does not import the package."""
    try:
        spec = importlib.util.find_spec(ELPV_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "data" / LABELS_FILE).is_file():
            return Path(location) / "data"
    return None


def read_labels(labels_file: Path) -> list[Cell]:
    """Every cell of ``labels_file``, checked: three fields, a probability of 0, 1/3, 2/3 or 1, a type of
    ``mono``/``poly`` and an existing image (relative to the file's folder).

    Raises:
        LayoutError: a line breaks one of these; the message names the file, the line and the fix.
    """
    cells = []
    for number, line in enumerate(labels_file.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{labels_file}, line {number} ({line.strip()!r})"
        if len(fields) != 3:
            raise LayoutError(f"{where}: expected 3 fields 'images/NAME.png PROBABILITY mono|poly'")
        try:
            probability = float(fields[1])
        except ValueError:
            raise LayoutError(f"{where}: the probability {fields[1]!r} is not a number") from None
        thirds = round(probability * 3)
        if thirds not in (0, 1, 2, 3) or abs(probability * 3 - thirds) > 1e-3:
            raise LayoutError(f"{where}: the probability must be 0, 1/3, 2/3 or 1, got {fields[1]}")
        if fields[2] not in ELPV_CATEGORIES:
            raise LayoutError(f"{where}: the type must be {' or '.join(ELPV_CATEGORIES)}, got {fields[2]!r}")
        image = labels_file.parent / fields[0]
        if not image.is_file():
            raise LayoutError(f"{where}: image {image} does not exist")
        cells.append(Cell(image, probability, thirds, fields[2]))
    return cells


def split_cells(
    cells: list[Cell], category: str, train_fraction: float, split_seed: int, uncertain: str
) -> SplitRecords:
    """The records of ``category``: a seeded ``train_fraction`` of its normals (in path order, then
    permuted) for training; the rest of them, the probability-1 cells and (``uncertain=test``) the
    uncertain ones, labelled anomalous, for testing."""
    mine = sorted((cell for cell in cells if cell.cell_type == category), key=lambda cell: str(cell.path))
    normals = [cell for cell in mine if cell.thirds == 0]
    n_train = round(train_fraction * len(normals))
    in_train = set(np.random.default_rng(split_seed).permutation(len(normals))[:n_train].tolist())

    def record(cell: Cell) -> Record:
        label = 0 if cell.thirds == 0 else 1
        defect_type = {0: NORMAL_DEFECT_TYPE, 3: DEFECTIVE}.get(cell.thirds) or UNCERTAIN_TYPES[cell.thirds]
        return Record(cell.path, None, label, defect_type, defect_probability=cell.probability)

    train = [record(cell) for index, cell in enumerate(normals) if index in in_train]
    test = [record(cell) for index, cell in enumerate(normals) if index not in in_train]
    tested_levels = (1, 2, 3) if uncertain == "test" else (3,)
    test += [record(cell) for cell in mine if cell.thirds in tested_levels]
    test.sort(key=lambda item: (item.label, item.defect_type, str(item.path)))
    return SplitRecords(train=train, test=test)


def read_elpv_split(
    layout: CategoryLayout, train_fraction: float, split_seed: int, uncertain: str
) -> SplitRecords:
    """The records of ``layout.category`` from ``layout.root/labels.csv`` (see ``split_cells``).

    Raises:
        LayoutError: a bad line in labels.csv, or a category without training or anomalous test cells.
    """
    labels_file = layout.root / LABELS_FILE
    records = split_cells(read_labels(labels_file), layout.category, train_fraction, split_seed, uncertain)
    category = layout.category
    if not records.train:
        raise LayoutError(f"{labels_file} lists no {category} cell of probability 0 (normal) to train on")
    if not any(item.label for item in records.test):
        raise LayoutError(f"{labels_file} lists no anomalous {category} cell (probability 1) to test")
    return records


class ELPV(LayoutDataset):
    """ELPV (categories ``mono``, ``poly``). Arguments as ``LayoutDataset`` (no download: the data come
    with the ``elpv-dataset`` package), plus:

    Args:
        root: a folder holding ``labels.csv`` and ``images/``; ``None``: the installed package's data.
        uncertain: ``exclude`` (default) leaves the 1/3 and 2/3 cells out; ``test`` tests them as anomalous.
        train_fraction: the share of a category's normal cells used for training (validation included).
        split_seed: seed of the train/test split of the normals (the same for every run seed).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        uncertain: str = "exclude",
        train_fraction: float = 0.75,
        split_seed: int = 0,
        image_size: int = 128,
        channels: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(root or ".", image_size=image_size, channels=channels, **options)
        self.root: Path | None = Path(root).expanduser() if root else None
        if uncertain not in UNCERTAIN_OPTIONS:
            raise ValueError(
                f"dataset.uncertain must be one of {', '.join(UNCERTAIN_OPTIONS)}, got {uncertain!r}"
            )
        if not 0.0 < float(train_fraction) < 1.0:
            raise ValueError(f"dataset.train_fraction must be in (0, 1), got {train_fraction}")
        self.uncertain = uncertain
        self.train_fraction = float(train_fraction)
        self.split_seed = int(split_seed)

    def categories(self) -> list[str]:
        """``mono`` and ``poly`` (no disk access)."""
        return list(ELPV_CATEGORIES)

    def data_dir(self) -> Path | None:
        """The folder holding labels.csv: under ``root`` when given (the root itself, or the ``data/``,
        ``src/elpv_dataset/data/`` or ``elpv_dataset/data/`` folder of a clone; ``None`` if none holds
        one), else the installed package's."""
        if self.root is None:
            return package_data_dir()
        candidates = [self.root, *(self.root / sub for sub in ROOT_SUBFOLDERS)]
        return next((folder for folder in candidates if (folder / LABELS_FILE).is_file()), None)

    def prepare(self, category: str) -> CategoryLayout:
        """The layout of ``category``, read through labels.csv (no copy, no download).

        Raises:
            ValueError: unknown category.
            MissingDataError: the package is not installed and ``root`` is not set, or ``root`` holds no
                labels.csv.
        """
        self.check_category(category)
        data_dir = self.data_dir()
        if data_dir is None:
            raise MissingDataError(self.missing_data_help(category))
        reader = functools.partial(
            read_elpv_split,
            train_fraction=self.train_fraction,
            split_seed=self.split_seed,
            uncertain=self.uncertain,
        )
        return CategoryLayout(root=data_dir, category=category, masks_required=False, reader=reader)

    def missing_data_help(self, category: str) -> str:
        """How to install ELPV, or where ``dataset.root`` must point."""
        if self.root is not None:
            return (
                f"ELPV not found: dataset.root={self.root} holds no {LABELS_FILE} (expected "
                f"{self.root / LABELS_FILE}, with lines 'images/cell0001.png 1.0 mono' and the images in "
                f"{self.root / 'images'}/, or the same in its {', '.join(ROOT_SUBFOLDERS)}). Point "
                f"dataset.root at the folder of a copy of the dataset that holds labels.csv and images/, or "
                f"drop it to use the installed package: {INSTALL_HINT}."
            )
        return (
            f"ELPV category '{category}' not found: the elpv-dataset package (the images and labels.csv, "
            f"about 90 MB from the package index) is not installed in this Python ({ELPV_PACKAGE} cannot be "
            f"found). Install it with {INSTALL_HINT}, or set dataset.root=/path/to/a/folder holding "
            f"labels.csv and images/ (a copy of the dataset) where there is no network."
        )
