"""VisA, the Visual Anomaly dataset (Zou et al., ECCV 2022): 12 objects, split by the official csv file.

The archive ``VisA_20220922.tar`` unpacks to ``ROOT/CATEGORY/Data/Images/{Normal,Anomaly}/*.JPG``,
``ROOT/CATEGORY/Data/Masks/Anomaly/*.png``, ``ROOT/CATEGORY/image_anno.csv`` and
``ROOT/split_csv/1cls.csv``; a root holding a ``VisA_20220922/`` (or ``VisA/``) folder is accepted too.
Which image is for training and which for testing is not given by folders but by the one-class split file
``split_csv/1cls.csv`` (columns ``object,split,label,image,mask``, paths relative to ``ROOT``): it is read
as it is, nothing is copied or rewritten. Training rows must be normal.

Masks hold small integers (one per defect region, 1..N), not 255, so a VisA mask is binarized with ``> 0``
(``CategoryLayout.mask_threshold = 0``). VisA has no defect-type folders: an anomalous image's defect type
is its ``label`` in ``CATEGORY/image_anno.csv`` (e.g. ``chunk of wax missing`` -> ``chunk_of_wax_missing``;
several defects are joined with ``+``), or ``anomaly`` when that file is absent or does not list it.
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path
from typing import Any

from anomaly_attn.data.errors import LayoutError, MissingDataError
from anomaly_attn.data.layout import NORMAL_DEFECT_TYPE, CategoryLayout, LayoutDataset, Record, SplitRecords

VISA_CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
VISA_SHA256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
"""sha256 of ``VisA_20220922.tar`` as recorded by anomalib (its older releases record md5
``ef908989b6dc701fc218f643c127a4de``)."""
VISA_SITE = "https://github.com/amazon-science/spot-diff"
VISA_TOP_FOLDERS: tuple[str, ...] = ("VisA_20220922", "VisA")
VISA_SPLIT_FILE = "split_csv/1cls.csv"
VISA_SPLIT_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_MASK_THRESHOLD = 0
"""VisA masks are 0 (normal) and 1..N (defect regions): any non-zero pixel is anomalous."""
VISA_UNKNOWN_DEFECT = "anomaly"
"""Defect type of an anomalous image that ``image_anno.csv`` does not name."""


def defect_type_name(label: str) -> str:
    """``image_anno.csv`` label -> defect type: lowercase, words joined by ``_``, several defects by ``+``."""
    parts = [re.sub(r"\W+", "_", part.strip().lower()).strip("_") for part in label.split(",")]
    return "+".join(sorted(part for part in parts if part)) or VISA_UNKNOWN_DEFECT


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of ``path`` as dicts; ``LayoutError`` naming the file if a required column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in required if name not in columns]
        if missing:
            raise LayoutError(
                f"{path} lacks the column(s) {', '.join(missing)}: expected a header with "
                f"{','.join(required)}, found {','.join(columns) or 'no header'}"
            )
        return [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in reader]


def _defect_types(category_dir: Path, data_root: Path) -> dict[Path, str]:
    """Image path -> defect type from ``CATEGORY/image_anno.csv`` (empty when the file is absent)."""
    annotations = category_dir / "image_anno.csv"
    if not annotations.is_file():
        return {}
    types = {}
    for row in _read_csv(annotations, ("image", "label")):
        if row["label"] and row["label"].lower() != "normal":
            # The archive's paths start at the root (candle/Data/...); accept category-relative ones too.
            for base in (data_root, category_dir):
                types[base / row["image"]] = defect_type_name(row["label"])
    return types


def read_visa_split(layout: CategoryLayout, split_file: Path, data_root: Path) -> SplitRecords:
    """Records of one VisA category as ``split_file`` (``1cls.csv``) assigns them; never writes.

    Raises:
        MissingDataError: the split file is missing.
        LayoutError: the split file lacks a column or has no row for the category, a row names a missing
            image or mask, an unknown split or label, or an anomalous training image; the message names the
            split file (and row) and the file expected.
    """
    category = layout.category
    if not split_file.is_file():
        raise MissingDataError(
            f"VisA split file {split_file} not found: it comes with the official archive "
            f"(VisA_20220922.tar, {VISA_SPLIT_FILE} next to the category folders). Extract the whole "
            f"archive into {data_root}, or set dataset.split_file=/path/to/1cls.csv."
        )
    rows = [row for row in _read_csv(split_file, VISA_SPLIT_COLUMNS) if row["object"] == category]
    if not rows:
        raise LayoutError(f"{split_file} has no row for category '{category}' (column 'object')")
    defect_types = _defect_types(layout.root, data_root)
    train: list[Record] = []
    test: list[Record] = []
    for row in rows:
        where = f"{split_file} (row {row['split']},{row['label']},{row['image']})"
        image = data_root / row["image"]
        if not image.is_file():
            raise LayoutError(f"{where}: image {image} does not exist")
        if row["label"] not in ("normal", "anomaly"):
            raise LayoutError(f"{where}: label must be 'normal' or 'anomaly', got {row['label']!r}")
        anomalous = row["label"] == "anomaly"
        if row["split"] == "train":
            if anomalous:
                raise LayoutError(
                    f"{where}: an anomalous training image; training uses normal images only, so use a "
                    f"one-class split file such as {VISA_SPLIT_FILE}"
                )
            train.append(Record(image, None, 0, NORMAL_DEFECT_TYPE))
        elif row["split"] == "test":
            if not anomalous:
                test.append(Record(image, None, 0, NORMAL_DEFECT_TYPE))
                continue
            mask = data_root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                expected = mask or data_root / category / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
                raise LayoutError(f"{where}: anomalous image {image} has no mask: expected {expected}")
            defect_type = defect_types.get(image, VISA_UNKNOWN_DEFECT)
            test.append(Record(image, mask, 1, defect_type, layout.mask_threshold))
        else:
            raise LayoutError(f"{where}: split must be 'train' or 'test', got {row['split']!r}")
    if not train:
        raise LayoutError(f"{split_file} has no training row for category '{category}'")
    if not test:
        raise LayoutError(f"{split_file} has no test row for category '{category}'")
    train.sort(key=lambda record: str(record.path))
    test.sort(key=lambda record: (record.label, record.defect_type, str(record.path)))
    return SplitRecords(train=train, test=test)


class VisA(LayoutDataset):
    """VisA. Arguments as ``LayoutDataset``, plus ``split_file`` (relative to the folder holding the
    categories, or absolute). ``url`` (also when ``null``) defaults to the official archive, whose
    ``sha256`` is then checked unless one is given."""

    def __init__(
        self,
        root: str | Path,
        url: str | None = None,
        sha256: str | None = None,
        split_file: str | Path = VISA_SPLIT_FILE,
        **options: Any,
    ) -> None:
        super().__init__(
            root, url=url or VISA_URL, sha256=sha256 or (None if url else VISA_SHA256), **options
        )
        self.split_file = Path(split_file).expanduser()

    def categories(self) -> list[str]:
        """The 12 VisA objects (no disk access)."""
        return list(VISA_CATEGORIES)

    def search_roots(self) -> list[Path]:
        """The root, or the archive's top folder inside it."""
        return [self.root, *(self.root / name for name in VISA_TOP_FOLDERS)]

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """The category folder, read through ``split_file`` with masks binarized at ``> 0``."""
        data_root = category_dir.parent
        reader = functools.partial(
            read_visa_split, split_file=data_root / self.split_file, data_root=data_root
        )
        return CategoryLayout(
            root=category_dir, category=category, mask_threshold=VISA_MASK_THRESHOLD, reader=reader
        )

    def missing_data_help(self, category: str) -> str:
        """Where to download VisA and where its folders must be."""
        return (
            f"VisA category '{category}' not found: expected {self.root / category}/ with "
            f"Data/Images/{{Normal,Anomaly}}/*.JPG and Data/Masks/Anomaly/*.png, and "
            f"{self.root / VISA_SPLIT_FILE}.\nDownload it automatically with dataset.download=true "
            f"(dataset.url={self.url}), or download VisA_20220922.tar yourself (see {VISA_SITE}) and "
            f"extract it into {self.root} (or set dataset.root=/path/to/the/extracted/folder)."
        )
