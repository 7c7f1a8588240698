"""MPDD, the Metal Parts Defect Detection dataset (Jezek et al., ICUMT 2021): six metal parts.

Stored in the MVTec AD layout: ``ROOT/CATEGORY/train/good``, ``CATEGORY/test/{good,DEFECT}`` and
``CATEGORY/ground_truth/DEFECT/NAME_mask.png`` (0/255 masks); a root holding an ``MPDD/`` folder is accepted
too. The authors distribute it as a shared OneDrive folder, not as one archive with a stable URL, so
``download=true`` needs ``dataset.url`` pointing at an archive of it (a mirror); without one the error says
where to get the data.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_attn.data.layout import CategoryLayout, LayoutDataset

MPDD_CATEGORIES: tuple[str, ...] = (
    "bracket_black",
    "bracket_brown",
    "bracket_white",
    "connector",
    "metal_plate",
    "tubes",
)
MPDD_SITE = "https://github.com/stepanje/MPDD"
MPDD_DOWNLOAD_PAGE = (
    "https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
    "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI"
)
"""The authors' OneDrive folder (as linked from ``MPDD_SITE``): downloaded by hand, in a browser."""
MPDD_TOP_FOLDER = "MPDD"


class MPDD(LayoutDataset):
    """MPDD. Arguments as ``LayoutDataset``; there is no default ``url`` (see the module docstring)."""

    def categories(self) -> list[str]:
        """The six MPDD parts (no disk access)."""
        return list(MPDD_CATEGORIES)

    def search_roots(self) -> list[Path]:
        """The root, or an ``MPDD/`` folder inside it."""
        return [self.root, self.root / MPDD_TOP_FOLDER]

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """MVTec naming: ``good``, ``ground_truth``, ``_mask.png``; every defect image has a mask."""
        return CategoryLayout(root=category_dir, category=category)

    def missing_data_help(self, category: str) -> str:
        """Where to download MPDD and where its folders must be."""
        return (
            f"MPDD category '{category}' not found: expected {self.root / category}/ (or "
            f"{self.root / MPDD_TOP_FOLDER / category}/) with train/good/*.png, test/{{good,DEFECT}}/*.png "
            f"and ground_truth/DEFECT/*_mask.png.\nMPDD has no single download URL: download the category "
            f"folders from the authors' OneDrive folder {MPDD_DOWNLOAD_PAGE} (linked from {MPDD_SITE}) and "
            f"put them in {self.root} (or set dataset.root=/path/to/MPDD); with an archive of them at a URL "
            f"of your own, dataset.download=true dataset.url=URL fetches and extracts it."
        )
