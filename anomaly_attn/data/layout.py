"""The MVTec AD folder layout, its reader, and the base class of datasets stored in it.

Every image dataset here (MVTec AD, BTAD, custom folders, the generated textures) lives on disk as

```
CATEGORY/train/NORMAL/*.png                 normal training images
CATEGORY/test/NORMAL/*.png                  normal test images
CATEGORY/test/DEFECT/*.png                  anomalous test images, one folder per defect type
CATEGORY/GROUND_TRUTH/DEFECT/STEM{SUFFIX}.png   binary masks of the anomalous test images
```

with per-dataset names for ``NORMAL`` (``good`` / ``ok``), ``GROUND_TRUTH``, ``test`` (MVTec AD 2:
``test_public``), an optional folder of official validation normals, and the mask ``SUFFIX`` (``_mask`` /
none). A dataset describes its category with a ``CategoryLayout``; one reader, ``read_mvtec_layout``, turns
any of them into records, so every dataset is read (and checked) the same way. A dataset whose split is not
given by folders (VisA: a csv file) puts its own ``reader`` in the layout; ``read_layout`` calls the right
one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from anomaly_attn.common.flags import parse_flag
from anomaly_attn.data.errors import LayoutError, MissingDataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Image files every reader accepts (datasets and ``predict`` alike), compared case-insensitively."""

MASK_SUFFIXES: tuple[str, ...] = ("_mask", "")
"""Mask name suffixes tried after the layout's own one (datasets disagree on them)."""

DEFAULT_MASK_THRESHOLD = 127
"""Mask pixels above this (0-255 scale) are anomalous: masks saved as 0/255 (MVTec AD, BTAD, MPDD). VisA
stores small integers (1..N, one per defect region) and uses 0."""


@dataclass(frozen=True)
class CategoryLayout:
    """Where one category lives on disk and how its MVTec-like tree is named.

    Attributes:
        root: the category folder (the one holding ``train/`` and ``test/``).
        category: the category name, for messages.
        normal_dir: name of the folders of normal images under ``train/`` and ``test/``.
        mask_suffix: appended to an image's stem to name its mask (other ``MASK_SUFFIXES`` are tried next).
        image_extensions: extensions of image and mask files.
        ground_truth_dir: name of the folder holding one mask folder per defect type.
        masks_required: whether an anomalous test image without a mask is an error (MVTec, BTAD) or an
            image without pixel ground truth (custom folders).
        test_dir: name of the folder holding the test images (MVTec AD 2: ``test_public``).
        val_dir: folder holding official validation normals in ``VAL_DIR/NORMAL`` (MVTec AD 2:
            ``validation``); ``None``: validation images are held out from the training images.
        mask_threshold: mask pixels above it (0-255 scale, after conversion to grayscale) are anomalous.
        reader: reads the category instead of ``read_mvtec_layout`` (a split not given by folders).
    """

    root: Path
    category: str
    normal_dir: str = "good"
    mask_suffix: str = "_mask"
    image_extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    ground_truth_dir: str = "ground_truth"
    masks_required: bool = True
    test_dir: str = "test"
    val_dir: str | None = None
    mask_threshold: int = DEFAULT_MASK_THRESHOLD
    reader: Callable[[CategoryLayout], SplitRecords] | None = None


class Record(NamedTuple):
    """One image of a split: its file, its mask file (``None`` for normal images or when absent), the
    threshold that binarizes that mask (``mask > mask_threshold`` on the 0-255 scale), and the annotators'
    probability that it is defective where a dataset gives one (ELPV; ``None`` elsewhere: the sample and
    ``per_image_scores.csv`` then have no ``defect_probability``)."""

    path: Path
    mask_path: Path | None
    label: int
    defect_type: str
    mask_threshold: int = DEFAULT_MASK_THRESHOLD
    defect_probability: float | None = None


class SplitRecords(NamedTuple):
    """Training records (normal only) and test records (normal and anomalous) of one category, and the
    dataset's official validation normals (``None``: hold validation images out of ``train``)."""

    train: list[Record]
    test: list[Record]
    val: list[Record] | None = None


NORMAL_DEFECT_TYPE = "good"
"""``defect_type`` of every normal image, whatever the dataset calls its normal folder."""


def list_images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Sorted image files directly in ``folder`` (hidden files skipped); empty if it does not exist."""
    if not folder.is_dir():
        return []
    wanted = {extension.lower() for extension in extensions}
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in wanted
    )


def _find_mask(image_path: Path, layout: CategoryLayout, masks: dict[str, Path]) -> Path | None:
    """The mask of ``image_path`` in ``masks`` (stem -> mask file), trying every mask suffix."""
    suffixes = (layout.mask_suffix, *(suffix for suffix in MASK_SUFFIXES if suffix != layout.mask_suffix))
    for suffix in suffixes:
        mask_path = masks.get(image_path.stem + suffix)
        if mask_path is not None:
            return mask_path
    return None


def read_mvtec_layout(layout: CategoryLayout) -> SplitRecords:
    """Read the records of one category in the MVTec layout described by ``layout``.

    Only lists files (no decoding; sizes are checked when the images are decoded). Never writes.

    Raises:
        MissingDataError: the category folder does not exist.
        LayoutError: no training or no test images, or (when ``layout.masks_required``) an anomalous test
            image without its mask; the message names the image and the mask path that was expected.
    """
    root = layout.root
    if not root.is_dir():
        raise MissingDataError(f"category folder {root} of '{layout.category}' does not exist")
    train = _normal_records(root / "train" / layout.normal_dir, layout, "training")

    test_root = root / layout.test_dir
    ground_truth_root = root / layout.ground_truth_dir
    test = [
        Record(path, None, 0, NORMAL_DEFECT_TYPE)
        for path in list_images(test_root / layout.normal_dir, layout.image_extensions)
    ]
    defect_folders = (
        sorted(
            p
            for p in test_root.iterdir()
            if p.is_dir() and p.name != layout.normal_dir and p != ground_truth_root  # AD 2: inside
        )
        if test_root.is_dir()
        else []
    )
    for defect_folder in defect_folders:
        defect_type = defect_folder.name
        mask_folder = ground_truth_root / defect_type
        masks = {path.stem: path for path in list_images(mask_folder, layout.image_extensions)}
        for image_path in list_images(defect_folder, layout.image_extensions):
            mask_path = _find_mask(image_path, layout, masks)
            if mask_path is None and layout.masks_required:
                expected = mask_folder / f"{image_path.stem}{layout.mask_suffix}.png"
                raise LayoutError(
                    f"defect image {image_path} has no mask: expected {expected} "
                    f"(any of {', '.join(layout.image_extensions)}; suffixes tried: "
                    f"'{layout.mask_suffix}', {', '.join(repr(s) for s in MASK_SUFFIXES)})"
                )
            test.append(Record(image_path, mask_path, 1, defect_type, layout.mask_threshold))
    if not test:
        raise LayoutError(
            f"category '{layout.category}' has no test images: expected image files in "
            f"{test_root / layout.normal_dir} and/or defect folders {test_root}/DEFECT_TYPE/"
        )
    val = None
    if layout.val_dir is not None:
        val = _normal_records(root / layout.val_dir / layout.normal_dir, layout, "validation")
    return SplitRecords(train=train, test=test, val=val)


def _normal_records(folder: Path, layout: CategoryLayout, split: str) -> list[Record]:
    """The normal images of one split's folder; none is a ``LayoutError`` naming the folder."""
    paths = list_images(folder, layout.image_extensions)
    records = [Record(path, None, 0, NORMAL_DEFECT_TYPE) for path in paths]
    if not records:
        raise LayoutError(
            f"category '{layout.category}' has no {split} images: expected files with extensions "
            f"{', '.join(layout.image_extensions)} in {folder}"
        )
    return records


def read_layout(layout: CategoryLayout) -> SplitRecords:
    """The records of one category: ``layout.reader`` if the dataset has one, else ``read_mvtec_layout``."""
    return layout.reader(layout) if layout.reader is not None else read_mvtec_layout(layout)


class LayoutDataset:
    """Base of datasets stored in the MVTec layout: configuration, category checks, locating, download.

    Instantiated by Hydra from ``conf/dataset/NAME.yaml``; the datamodule reads the loader settings
    (``batch_size``, ``num_workers``, ``val_fraction``, ...) from it. A subclass provides ``categories()``,
    ``layout_for(category, category_dir)`` and ``missing_data_help(category)``, and may change
    ``default_augmentation(category)`` and ``search_roots()``.

    Args:
        root: folder holding the categories (``~`` expanded).
        image_size: side of the square images the model sees (images and masks are resized to it).
        channels: 3 (RGB) or 1 (grayscale); every image is converted to it.
        batch_size: loader batch size.
        num_workers: loader worker processes (0 = load in the main process; decoded images are cached).
        val_fraction: fraction of the normal training images held out for validation (seeded).
        augment: ``False``/``None`` (none), ``True`` (the dataset's safe default for the category), or an
            albumentations spec ``{TransformName: {kwarg: value}}`` applied to image and mask together.
        download: download ``url`` into ``root`` when the data is missing.
        url: archive to download.
        sha256: expected checksum of the archive (``None``: not verified).
        skip_corrupt: warn about and skip images that cannot be decoded instead of failing.
        name: the dataset's name in messages (default: its module name, e.g. ``mvtec``).
        cache: ``dataset.cache``, the persistent cache of decoded images (``enabled``, ``max_gb``, ``dir``;
            see ``disk_cache.CacheSettings``).
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 256,
        channels: int = 3,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        augment: bool | Mapping[str, Any] | None = False,
        download: bool = False,
        url: str | None = None,
        sha256: str | None = None,
        skip_corrupt: bool = False,
        name: str | None = None,
        cache: Mapping[str, Any] | bool | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = Path(root).expanduser()
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.augment = augment
        self.download = parse_flag(download, "dataset.download")
        self.url = url
        self.sha256 = sha256
        self.skip_corrupt = parse_flag(skip_corrupt, "dataset.skip_corrupt")
        self.name = name or type(self).__module__.rsplit(".", 1)[-1]
        from anomaly_attn.data.disk_cache import CacheSettings

        self.cache_settings = CacheSettings.from_config(cache)

    def categories(self) -> list[str]:
        """The valid category names."""
        raise NotImplementedError

    def check_category(self, category: str) -> str:
        """Return ``category`` if valid, else raise ``ValueError`` naming the valid categories."""
        valid = self.categories()
        if category not in valid:
            raise ValueError(
                f"unknown {self.name} category '{category}'; valid categories: {', '.join(valid)}"
            )
        return category

    def search_roots(self) -> list[Path]:
        """Folders that may hold the category folders (the root, and e.g. an archive's top folder in it)."""
        return [self.root]

    def find_category_dir(self, category: str) -> Path | None:
        """The existing folder of ``category`` under one of ``search_roots()``, or ``None``."""
        for search_root in self.search_roots():
            candidate = search_root / category
            if candidate.is_dir():
                return candidate
        return None

    def layout_for(self, category: str, category_dir: Path) -> CategoryLayout:
        """How the category at ``category_dir`` is named (normal folder, mask suffix, ...)."""
        raise NotImplementedError

    def missing_data_help(self, category: str) -> str:
        """What to do when ``category`` is not on disk: where to get the data and where to put it."""
        raise NotImplementedError

    def prepare(self, category: str) -> CategoryLayout:
        """Make sure ``category`` is on disk (downloading it if allowed) and return its layout.

        Raises:
            ValueError: unknown category.
            MissingDataError: the category folder is missing and was not downloaded.
        """
        self.check_category(category)
        category_dir = self.find_category_dir(category)
        if category_dir is None and self.download:
            if not self.url:
                raise MissingDataError(
                    f"{self.name}: download=true but no url is configured.\n"
                    f"{self.missing_data_help(category)}"
                )
            from anomaly_attn.data.download import download_and_extract

            log.info("downloading %s from %s into %s", self.name, self.url, self.root)
            download_and_extract(self.url, self.root, self.sha256)
            category_dir = self.find_category_dir(category)
        if category_dir is None:
            raise MissingDataError(self.missing_data_help(category))
        return self.layout_for(category, category_dir)

    def default_augmentation(self, category: str) -> Mapping[str, Any] | None:
        """The augmentation ``augment=True`` means for ``category``; ``None`` where none is safe."""
        return None
