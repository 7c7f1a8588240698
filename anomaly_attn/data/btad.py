"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., 2021): three industrial products.

Layout per product: ``01/train/ok``, ``01/test/{ok,ko}``, ``01/ground_truth/ko``. Images and masks are
``.png`` or ``.bmp`` (product 03 uses ``.bmp``); a mask has its image's stem, without suffix (a ``_mask``
suffix is accepted too). The distributed zip unpacks to ``BTech_Dataset_transformed/``; the root may be
that folder or the folder above it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_attn.data.layout import CategoryLayout, LayoutDataset

BTAD_CATEGORIES: tuple[str, ...] = ("01", "02", "03")
BTAD_URL = "https://avires.dimi.uniud.it/papers/btad/btad.zip"
BTAD_TOP_FOLDER = "BTech_Dataset_transformed"


class BTAD(LayoutDataset):
    """BTAD. Arguments as ``LayoutDataset``; ``url`` (also when ``null``) defaults to the authors' zip."""

    def __init__(self, root: str | Path, url: str | None = None, **options: Any) -> None:
        super().__init__(root, url=url or BTAD_URL, **options)

    def categories(self) -> list[str]:
        """``01``, ``02``, ``03`` (no disk access)."""
        return list(BTAD_CATEGORIES)

    def search_roots(self) -> list[Path]:
        """The root, or the zip's ``BTech_Dataset_transformed/`` folder inside it."""
        return [self.root, self.root / BTAD_TOP_FOLDER]

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """``ok`` normals, ``ko`` defects, masks named like their images, masks required."""
        return CategoryLayout(root=category_dir, category=category, normal_dir="ok", mask_suffix="")

    def missing_data_help(self, category: str) -> str:
        """Where to download BTAD and where its folders must be."""
        return (
            f"BTAD category '{category}' not found: expected {self.root / category}/ or "
            f"{self.root / BTAD_TOP_FOLDER / category}/ with train/ok/, test/{{ok,ko}}/ and ground_truth/ko/ "
            f"(.png or .bmp).\nDownload it automatically with dataset.download=true "
            f"(dataset.url={self.url}), or download btad.zip yourself and unzip it into {self.root}."
        )
