"""Corrupted Fashion-MNIST: one class is normal, anomalies are painted shapes (or other classes).

The four IDX files are turned, once per (protocol, corruption, seed, class), into an MVTec-layout tree of
PNG files under ``cache_dir`` so that Fashion-MNIST is read like every other dataset:

```
<cache>/<protocol>_<corruption>_seed<k>/<class>/train/good/00000.png
                                                test/good/*.png
                                                test/corrupted/*.png            (protocol "corrupted")
                                                ground_truth/corrupted/*_mask.png
                                                test/other_class/*.png          (protocol "one_vs_rest")
                                                manifest.json
```

Protocol ``corrupted`` (the research code's): a seeded half of the class's test images gets ONE shape
(rectangle, ellipse or line of 3-8 px, dilated by 1 px: ``painted_shapes.py``) painted white, or
(``corruption=gray``) with a random gray level that differs visibly from the pixels it covers: white shapes
are found by brightness alone. Masks are exactly the painted pixels, saved as PNG (0/255). Both corruptions
corrupt the same images with the same shapes for a given seed; only the painted level differs. Protocol
``one_vs_rest``: the class's test images are normal and an equal-sized seeded sample of the other classes'
test images is anomalous (image level only: no masks). File names are the image's index in the IDX file
(read by ``idx_format.py``), so every PNG traces back to its source.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from anomaly_attn.common.locks import exclusive
from anomaly_attn.data.download import download_file
from anomaly_attn.data.errors import CorruptImageError, MissingDataError
from anomaly_attn.data.idx_format import read_idx
from anomaly_attn.data.layout import CategoryLayout, LayoutDataset
from anomaly_attn.data.painted_shapes import draw_shape, gray_level

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
IDX_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
OFFICIAL_MD5: Mapping[str, str] = MappingProxyType(
    {  # as published by the dataset authors and checked by torchvision.datasets.FashionMNIST
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    }
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where ``sudo apt-get install dataset-fashion-mnist`` puts the four files."""

CLASS_ALIASES = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)
"""Readable names of the classes 0..9, accepted wherever a category is."""

CORRUPTIONS = ("white", "gray")
PROTOCOLS = ("corrupted", "one_vs_rest")
CORRUPTED_DIR, OTHER_CLASS_DIR, NORMAL_DIR, GROUND_TRUTH_DIR, MASK_SUFFIX = (
    "corrupted",
    "other_class",
    "good",
    "ground_truth",
    "_mask",
)
GENERATOR_VERSION = 1
"""Bump when the generated tree changes for the same parameters, so existing caches are regenerated."""


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written to (or created: its nearest existing ancestor is writable)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK)
    return False


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG")  # a 2-d uint8 array is an 8-bit grayscale PNG


class FashionMNIST(LayoutDataset):
    """Fashion-MNIST with one normal class, generated into an MVTec-layout tree on first use.

    Args:
        root: folder holding the four IDX ``.gz`` files, flat or in torchvision's ``FashionMNIST/raw/``.
        cache_dir: where the generated PNG trees go; ``None``: ``root/generated`` if ``root`` is
            writable, else ``~/.cache/anomaly_attn/fmnist``.
        image_size, channels, batch_size, num_workers, val_fraction, augment, skip_corrupt: as in
            ``LayoutDataset`` (images are stored at 28 px; the loader resizes them to ``image_size``).
        download: download the four files from ``url`` when they are missing.
        url: folder URL the four file names are appended to; ``None``: the official one.
        md5: expected md5 of each downloaded file (by file name); ``None`` skips the check.
        corruption: ``white`` or ``gray`` painted shapes (protocol ``corrupted`` only).
        protocol: ``corrupted`` (painted shapes, pixel masks) or ``one_vs_rest`` (other classes, no masks).
        seed: seed of which test images are corrupted, the shapes, levels and the other-class sample.
    """

    def __init__(
        self,
        root: str | Path = DEBIAN_DIR,
        cache_dir: str | Path | None = None,
        image_size: int = 28,
        channels: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        download: bool = False,
        url: str | None = None,
        md5: Mapping[str, str] | None = OFFICIAL_MD5,
        corruption: str = "white",
        protocol: str = "corrupted",
        seed: int = 0,
        augment: bool | Mapping[str, Any] | None = False,
        skip_corrupt: bool = False,
        cache: Mapping[str, Any] | bool | None = None,
    ) -> None:
        super().__init__(
            root=root,
            image_size=image_size,
            channels=channels,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            augment=augment,
            download=download,
            url=url or DEFAULT_URL,
            skip_corrupt=skip_corrupt,
            cache=cache,
        )
        if corruption not in CORRUPTIONS:
            raise ValueError(f"unknown corruption '{corruption}'; valid: {', '.join(CORRUPTIONS)}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol '{protocol}'; valid: {', '.join(PROTOCOLS)}")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.md5 = dict(md5) if md5 is not None else None
        self.corruption = corruption
        self.protocol = protocol
        self.seed = int(seed)

    def categories(self) -> list[str]:
        """The classes ``0``..``9`` (aliases such as ``boot`` are accepted too, see ``CLASS_ALIASES``)."""
        return [str(index) for index in range(len(CLASS_ALIASES))]

    def canonical_category(self, category: str | int) -> str:
        """The digit of ``category`` (a digit, an int from the command line, or an alias like ``boot``)."""
        text = str(category).strip().lower()
        if text in CLASS_ALIASES:
            return str(CLASS_ALIASES.index(text))
        if text in self.categories():
            return text
        raise ValueError(
            f"unknown fmnist category '{category}'; valid categories: {', '.join(self.categories())} or "
            f"their names {', '.join(f'{alias}={index}' for index, alias in enumerate(CLASS_ALIASES))}"
        )

    def check_category(self, category: str | int) -> str:
        """The canonical digit of ``category``; ``ValueError`` naming the valid ones if it is unknown."""
        return self.canonical_category(category)

    def source_dirs(self) -> list[Path]:
        """Folders searched for the four IDX files, in order."""
        return [self.root / "FashionMNIST" / "raw", self.root, self._cache_root() / "raw"]

    def _cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        if _writable(self.root):
            return self.root / "generated"
        return Path("~/.cache/anomaly_attn/fmnist").expanduser()

    def find_source_dir(self) -> Path | None:
        """The first of ``source_dirs()`` holding all four files (``.gz`` or uncompressed), or ``None``."""
        for folder in self.source_dirs():
            if all(self._source_file(folder, name) is not None for name in IDX_FILES):
                return folder
        return None

    @staticmethod
    def _source_file(folder: Path, name: str) -> Path | None:
        for candidate in (folder / name, folder / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
        return None

    def missing_data_help(self, category: str) -> str:
        return (
            f"Fashion-MNIST files not found. Expected {', '.join(IDX_FILES)} either in "
            f"{self.root / 'FashionMNIST' / 'raw'} (torchvision's layout) or directly in {self.root} "
            f"(flat; set dataset.root). Install them with `sudo apt-get install dataset-fashion-mnist` "
            f"(puts them in {DEBIAN_DIR}) or set dataset.download=true to fetch them from {self.url}."
        )

    def _download(self) -> Path:
        target = self.root / "FashionMNIST" / "raw" if _writable(self.root) else self._cache_root() / "raw"
        log.info("downloading Fashion-MNIST from %s into %s", self.url, target)
        base_url = self.url if self.url.endswith("/") else self.url + "/"
        for name in IDX_FILES:
            md5 = self.md5.get(name) if self.md5 is not None else None
            download_file(base_url + name, target / name, md5=md5)
        return target

    def prepare(self, category: str | int) -> CategoryLayout:
        """Generate (or reuse) the tree of ``category`` for the configured protocol and return its layout.

        Raises:
            ValueError: unknown category.
            MissingDataError: the IDX files are not on disk and were not downloaded.
            CorruptImageError: an IDX file is not a valid IDX file.
        """
        digit = self.canonical_category(category)
        category_dir = self._cache_root() / f"{self.protocol}_{self.corruption}_seed{self.seed}" / digit
        source_dir = self.find_source_dir()
        if source_dir is None and self.download:
            source_dir = self._download()
        if source_dir is None:
            raise MissingDataError(self.missing_data_help(digit))
        manifest = self._manifest(int(digit), source_dir)
        if not self._is_current(category_dir, manifest):
            # One generator at a time (common.locks): a parallel job that waited finds the tree current.
            lock = category_dir.parent / f".{digit}.lock"
            with exclusive(lock, f"generating Fashion-MNIST class {digit} into {category_dir}"):
                if not self._is_current(category_dir, manifest):
                    self._generate(category_dir, int(digit), source_dir, manifest)
        return CategoryLayout(
            root=category_dir,
            category=digit,
            normal_dir=NORMAL_DIR,
            mask_suffix=MASK_SUFFIX,
            image_extensions=(".png",),
            ground_truth_dir=GROUND_TRUTH_DIR,
            masks_required=self.protocol == "corrupted",
        )

    def _manifest(self, class_index: int, source_dir: Path) -> dict[str, Any]:
        """What the tree is made from; a change (parameters, source files, generator) regenerates it."""
        sources = {
            name: {"path": str(path.resolve()), "bytes": path.stat().st_size}
            for name in IDX_FILES
            if (path := self._source_file(source_dir, name)) is not None
        }
        return {
            "generator_version": GENERATOR_VERSION,
            "class": class_index,
            "class_name": CLASS_ALIASES[class_index],
            "protocol": self.protocol,
            "corruption": self.corruption if self.protocol == "corrupted" else None,
            "seed": self.seed,
            "sources": sources,
        }

    @staticmethod
    def _is_current(category_dir: Path, manifest: Mapping[str, Any]) -> bool:
        manifest_path = category_dir / "manifest.json"
        if not manifest_path.is_file():
            return False
        try:
            stored = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return False
        return {key: stored.get(key) for key in manifest} == dict(manifest)

    def _generate(
        self, category_dir: Path, class_index: int, source_dir: Path, manifest: dict[str, Any]
    ) -> None:
        """Write the tree into a staging folder, then move it into place (never a half-written tree)."""
        train_images = read_idx(self._source_file(source_dir, TRAIN_IMAGES), 3)
        train_labels = read_idx(self._source_file(source_dir, TRAIN_LABELS), 1)
        test_images = read_idx(self._source_file(source_dir, TEST_IMAGES), 3)
        test_labels = read_idx(self._source_file(source_dir, TEST_LABELS), 1)
        for images, labels, images_name in (
            (train_images, train_labels, TRAIN_IMAGES),
            (test_images, test_labels, TEST_IMAGES),
        ):
            if len(images) != len(labels):
                raise CorruptImageError(
                    f"{source_dir / images_name} holds {len(images)} images but its label file holds "
                    f"{len(labels)} labels; reinstall/re-download the dataset."
                )
        log.info("generating Fashion-MNIST %s class %d into %s", self.protocol, class_index, category_dir)
        category_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{category_dir.name}-", dir=category_dir.parent))
        try:
            train_dir = staging / "train" / NORMAL_DIR
            train_dir.mkdir(parents=True)
            for index in np.flatnonzero(train_labels == class_index):
                _save_png(train_images[index], train_dir / f"{index:05d}.png")
            if self.protocol == "corrupted":
                details = self._write_corrupted_test(staging, test_images, test_labels, class_index)
            else:
                details = self._write_one_vs_rest_test(staging, test_images, test_labels, class_index)
            (staging / "manifest.json").write_text(json.dumps({**manifest, **details}, indent=1) + "\n")
            if category_dir.exists():  # an outdated tree (under the lock: nobody else is writing it)
                shutil.rmtree(category_dir)
            os.replace(staging, category_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_corrupted_test(
        self, staging: Path, images: np.ndarray, labels: np.ndarray, class_index: int
    ) -> dict[str, Any]:
        """Half the class's test images get one painted shape; returns what was painted where."""
        normal_dir = staging / "test" / NORMAL_DIR
        corrupted_dir = staging / "test" / CORRUPTED_DIR
        mask_dir = staging / GROUND_TRUTH_DIR / CORRUPTED_DIR
        for folder in (normal_dir, corrupted_dir, mask_dir):
            folder.mkdir(parents=True)
        # Separate streams: which images and which shapes do not depend on the corruption, so the white
        # and gray trees of one seed differ only in the painted level.
        selection_rng = np.random.default_rng([self.seed, class_index, 0])
        shape_rng = np.random.default_rng([self.seed, class_index, 1])
        level_rng = np.random.default_rng([self.seed, class_index, 2])
        indices = np.flatnonzero(labels == class_index)
        corrupted = set(selection_rng.permutation(indices)[: len(indices) // 2].tolist())
        painted = []
        for index in indices:
            image = images[index]
            if index not in corrupted:
                _save_png(image, normal_dir / f"{index:05d}.png")
                continue
            mask, kind = draw_shape(shape_rng, size=image.shape[0])
            level = 255 if self.corruption == "white" else gray_level(level_rng, image[mask])
            corrupted_image = image.copy()
            corrupted_image[mask] = level
            _save_png(corrupted_image, corrupted_dir / f"{index:05d}.png")
            _save_png(mask.astype(np.uint8) * 255, mask_dir / f"{index:05d}{MASK_SUFFIX}.png")
            painted.append(
                {"file": f"{index:05d}.png", "shape": kind, "level": level, "pixels": int(mask.sum())}
            )
        return {
            "normal_test": len(indices) - len(painted),
            "anomalous_test": len(painted),
            "painted": painted,
        }

    def _write_one_vs_rest_test(
        self, staging: Path, images: np.ndarray, labels: np.ndarray, class_index: int
    ) -> dict[str, Any]:
        """The class's test images as normal, as many other-class test images (seeded sample) as anomalous."""
        normal_dir = staging / "test" / NORMAL_DIR
        other_dir = staging / "test" / OTHER_CLASS_DIR
        normal_dir.mkdir(parents=True)
        other_dir.mkdir(parents=True)
        normal_indices = np.flatnonzero(labels == class_index)
        other_indices = np.flatnonzero(labels != class_index)
        rng = np.random.default_rng([self.seed, class_index, 3])
        sample = np.sort(
            rng.choice(other_indices, size=min(len(normal_indices), len(other_indices)), replace=False)
        )
        for index in normal_indices:
            _save_png(images[index], normal_dir / f"{index:05d}.png")
        for index in sample:
            _save_png(images[index], other_dir / f"{index:05d}_class{labels[index]}.png")
        sampled_classes = np.bincount(labels[sample], minlength=len(CLASS_ALIASES))
        return {
            "normal_test": len(normal_indices),
            "anomalous_test": len(sample),
            "anomalous_per_class": sampled_classes.tolist(),
        }
