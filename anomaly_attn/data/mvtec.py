"""MVTec AD (Bergmann et al., CVPR 2019): 15 industrial categories in the layout of its official archive.

The archive unpacks to ``ROOT/CATEGORY/{train,test,ground_truth}`` with ``good`` normal folders and
``NAME_mask.png`` masks; a root holding an ``mvtec_anomaly_detection/`` folder is accepted too. Flips are
only a safe augmentation for the five texture categories: mirroring an object can create a defect (a
transistor's leads, a screw's thread), so ``augment=true`` does nothing for objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anomaly_attn.data.layout import CategoryLayout, LayoutDataset
from anomaly_attn.data.transforms import TEXTURE_FLIPS

MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
MVTEC_CATEGORIES: tuple[str, ...] = tuple(sorted(MVTEC_TEXTURES + MVTEC_OBJECTS))

MVTEC_URL = (
    "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
    "mvtec_anomaly_detection.tar.xz"
)
MVTEC_SITE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"


class MVTec(LayoutDataset):
    """MVTec AD. Arguments as ``LayoutDataset``; ``url`` (also when ``null``) defaults to the official
    archive (4.9 GB)."""

    def __init__(self, root: str | Path, url: str | None = None, **options: Any) -> None:
        super().__init__(root, url=url or MVTEC_URL, **options)

    def categories(self) -> list[str]:
        """The 15 MVTec AD categories (no disk access)."""
        return list(MVTEC_CATEGORIES)

    def search_roots(self) -> list[Path]:
        """The root, or the archive's ``mvtec_anomaly_detection/`` folder inside it."""
        return [self.root, self.root / "mvtec_anomaly_detection"]

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """Official naming: ``good``, ``ground_truth``, ``_mask.png``; every defect image has a mask."""
        return CategoryLayout(root=category_dir, category=category)

    def missing_data_help(self, category: str) -> str:
        """Where to download MVTec AD and where its folders must be."""
        return (
            f"MVTec AD category '{category}' not found: expected {self.root / category}/ with "
            f"train/good/*.png, test/{{good,DEFECT}}/*.png and ground_truth/DEFECT/*_mask.png.\n"
            f"Download it automatically with dataset.download=true (dataset.url={self.url}), or get "
            f"mvtec_anomaly_detection.tar.xz from {MVTEC_SITE} and extract it into {self.root} "
            f"(or set dataset.root=/path/to/mvtec_anomaly_detection)."
        )

    def default_augmentation(self, category: str) -> Mapping[str, Any] | None:
        """Flips for texture categories; none for objects (a mirrored object can be a defect)."""
        return TEXTURE_FLIPS if category in MVTEC_TEXTURES else None
