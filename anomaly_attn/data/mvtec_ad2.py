"""MVTec AD 2 (Heckler-Kram et al., 2025): eight categories, public test set only.

The archive ``mvtec_ad_2.tar.gz`` unpacks to ``ROOT/CATEGORY/train/good``, ``CATEGORY/validation/good``,
``CATEGORY/test_public/{good,bad}``, ``CATEGORY/test_public/ground_truth/bad/NAME_mask.png`` (0/255) and
the unlabelled ``CATEGORY/test_private/`` and ``CATEGORY/test_private_mixed/``; a root holding an
``mvtec_ad_2/`` folder is accepted too.

- Training uses ``train/good``; validation (checkpoint and map choice) uses the official
  ``validation/good`` normals, so ``val_fraction`` is not used.
- Testing uses ``test_public`` only. The private test sets carry no labels or masks (they are scored by
  MVTec's evaluation server), so they cannot be evaluated here and are not read.
- Anomalous images are all in ``bad`` (the public release names no defect types): defect type ``bad``.

MVTec AD 2 is downloaded after accepting its licence on MVTec's page (``MVTEC_AD2_SITE``), so there is no
default ``url``: ``download=true`` without one says where to get it; with ``dataset.url`` set to the link
that page gives, the archive is fetched and extracted like MVTec AD's.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_attn.data.layout import CategoryLayout, LayoutDataset

MVTEC_AD2_CATEGORIES: tuple[str, ...] = (
    "can",
    "fabric",
    "fruit_jelly",
    "rice",
    "sheet_metal",
    "vial",
    "wallplugs",
    "walnuts",
)
MVTEC_AD2_SITE = "https://www.mvtec.com/company/research/datasets/mvtec-ad-2"
MVTEC_AD2_ARCHIVE = "mvtec_ad_2.tar.gz"
MVTEC_AD2_SHA256 = "c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4"
"""sha256 of ``mvtec_ad_2.tar.gz`` as recorded by anomalib (pass it as ``dataset.sha256``)."""
MVTEC_AD2_TOP_FOLDER = "mvtec_ad_2"


class MVTecAD2(LayoutDataset):
    """MVTec AD 2. Arguments as ``LayoutDataset``; no default ``url`` (licence click-through)."""

    def categories(self) -> list[str]:
        """The eight MVTec AD 2 categories (no disk access)."""
        return list(MVTEC_AD2_CATEGORIES)

    def search_roots(self) -> list[Path]:
        """The root, or an ``mvtec_ad_2/`` folder inside it."""
        return [self.root, self.root / MVTEC_AD2_TOP_FOLDER]

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """``train/good``, ``validation/good``, ``test_public/{good,bad}`` and its ``ground_truth``."""
        return CategoryLayout(
            root=category_dir,
            category=category,
            test_dir="test_public",
            ground_truth_dir="test_public/ground_truth",
            val_dir="validation",
        )

    def missing_data_help(self, category: str) -> str:
        """Where to download MVTec AD 2 and where its folders must be."""
        return (
            f"MVTec AD 2 category '{category}' not found: expected {self.root / category}/ (or "
            f"{self.root / MVTEC_AD2_TOP_FOLDER / category}/) with train/good/*.png, validation/good/*.png, "
            f"test_public/{{good,bad}}/*.png and test_public/ground_truth/bad/*_mask.png.\n"
            f"MVTec AD 2 is downloaded after accepting its licence at {MVTEC_AD2_SITE}: get "
            f"{MVTEC_AD2_ARCHIVE} there and extract it into {self.root} (or set "
            f"dataset.root=/path/to/mvtec_ad_2), or pass the download link the page gives as "
            f"dataset.url=LINK with dataset.download=true (dataset.sha256={MVTEC_AD2_SHA256} checks "
            f"the 2025 archive)."
        )
