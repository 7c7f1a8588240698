"""Custom data in an MVTec-like layout: one subfolder per category under ``root``.

``CATEGORY/train/NORMAL``, ``CATEGORY/test/NORMAL`` and one ``CATEGORY/test/DEFECT`` folder per defect
type (every test subfolder other than ``NORMAL``), with optional masks in
``CATEGORY/GROUND_TRUTH/DEFECT/STEM{SUFFIX}.png``. A defect image without a mask is allowed unless
``require_masks``: its sample has ``has_mask=False`` and pixel metrics are skipped for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anomaly_attn.data.errors import MissingDataError
from anomaly_attn.data.layout import CategoryLayout, LayoutDataset


class Folder(LayoutDataset):
    """An MVTec-like folder of your own.

    Args:
        root: folder whose subfolders are the categories.
        normal_dir: name of the normal-image folders under ``train/`` and ``test/``.
        mask_suffix: appended to an image stem to name its mask (``_mask`` and no suffix are tried too).
        ground_truth_dir: name of the mask folder next to ``train/`` and ``test/``.
        require_masks: make a defect image without a mask an error instead of an image without pixel
            ground truth.
        **options: as ``LayoutDataset`` (``image_size``, ``channels``, ``batch_size``, ...).
    """

    def __init__(
        self,
        root: str | Path,
        normal_dir: str = "good",
        mask_suffix: str = "_mask",
        ground_truth_dir: str = "ground_truth",
        require_masks: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(root, **options)
        self.normal_dir = normal_dir
        self.mask_suffix = mask_suffix
        self.ground_truth_dir = ground_truth_dir
        self.require_masks = require_masks

    def categories(self) -> list[str]:
        """The subfolders of ``root`` (hidden ones skipped).

        Raises:
            MissingDataError: ``root`` is not a folder, or holds no category folder.
        """
        if not self.root.is_dir():
            raise MissingDataError(f"dataset.root={self.root} is not a folder. {self.layout_help()}")
        names = sorted(
            path.name for path in self.root.iterdir() if path.is_dir() and not path.name.startswith(".")
        )
        if not names:
            raise MissingDataError(f"dataset.root={self.root} holds no category folder. {self.layout_help()}")
        return names

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """The configured folder names and mask suffix."""
        return CategoryLayout(
            root=category_dir,
            category=category,
            normal_dir=self.normal_dir,
            mask_suffix=self.mask_suffix,
            ground_truth_dir=self.ground_truth_dir,
            masks_required=self.require_masks,
        )

    def missing_data_help(self, category: str) -> str:
        """What is missing for ``category``, and the layout a custom dataset must have."""
        return f"no data for category '{category}' under {self.root}. {self.layout_help(category)}"

    def layout_help(self, category: str = "CATEGORY") -> str:
        """The layout a custom dataset must have (``CATEGORY`` stands for each category folder)."""
        category_dir = self.root / category
        return (
            f"A folder dataset needs {category_dir}/train/{self.normal_dir}/*.png, "
            f"{category_dir}/test/{{{self.normal_dir},DEFECT}}/*.png "
            f"and optionally {category_dir}/{self.ground_truth_dir}/DEFECT/NAME{self.mask_suffix}.png; "
            "set dataset.root to the folder holding the category folders."
        )
