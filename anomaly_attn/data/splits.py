"""One category's splits, loaders and training-image statistics, without Lightning (the classical
detectors use them as they are; ``training.datamodule.AnomalyDataModule`` makes them a LightningDataModule).

Validation data are held-out normal training images (a seeded split), or the dataset's own validation
normals where it has them (MVTec AD 2), never test images: checkpoint choice and thresholds must not see
the test set.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from anomaly_attn.data.dataset import AnomalyImageDataset, ImageCache
from anomaly_attn.data.layout import CategoryLayout, LayoutDataset, Record, read_layout
from anomaly_attn.data.transforms import resolve_augmentation

log = logging.getLogger(__name__)


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The start method of loader workers: the process's own where it is a standard one (``None``: torch
    uses it), else the platform's default. A job run by ``hydra/launcher=joblib`` lives in a loky worker
    whose default context is loky's, and DataLoader workers started through it fail ("'Process' object
    has no attribute 'env'"), so every dataset with ``num_workers > 0`` failed under that launcher."""
    if multiprocessing.get_start_method(allow_none=True) in (None, *multiprocessing.get_all_start_methods()):
        return None
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


def split_validation(
    records: list[Record], val_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split normal training records into (train, validation), seeded and independent of file order.

    Holds out ``round(val_fraction · N)`` images, at least one when ``val_fraction > 0`` and ``N ≥ 2``, and
    always leaves at least one for training.
    """
    count = len(records)
    n_val = 0 if val_fraction <= 0 or count < 2 else min(max(1, round(val_fraction * count)), count - 1)
    ordered = sorted(records, key=lambda record: str(record.path))
    permutation = np.random.default_rng(seed).permutation(count)
    val_indices = set(permutation[:n_val].tolist())
    train = [record for index, record in enumerate(ordered) if index not in val_indices]
    val = [record for index, record in enumerate(ordered) if index in val_indices]
    return train, val


class CategorySplits:
    """Splits and loaders for one category of a dataset (``LayoutDataset`` or anything with its interface).

    ``setup()`` prepares the category, reads its layout, decodes every image once into memory (so a
    corrupt file or a mis-sized mask fails here, not hours into training; or maps it from the dataset's
    persistent cache of decoded splits, ``dataset.cache``) and splits off validation.

    Args:
        dataset: the dataset object (from ``conf/dataset/NAME.yaml``), holding the loader settings.
        category: the category to train and test on; checked immediately.
        seed: seed of the validation split and of the training shuffle order.
    """

    def __init__(self, dataset: LayoutDataset, category: str, seed: int = 0) -> None:
        super().__init__()
        dataset.check_category(category)
        self.dataset = dataset
        self.category = category
        self.seed = seed
        self.layout: CategoryLayout | None = None
        settings = getattr(dataset, "cache_settings", None)
        self.cache = ImageCache(dataset.image_size, dataset.channels, settings.store() if settings else None)
        self.train_set: AnomalyImageDataset | None = None
        self.val_set: AnomalyImageDataset | None = None
        self.test_set: AnomalyImageDataset | None = None
        self._mean_image: torch.Tensor | None = None

    @property
    def num_channels(self) -> int:
        """Channels of every image (1 or 3)."""
        return self.dataset.channels

    @property
    def image_size(self) -> int:
        """Side of the square images."""
        return self.dataset.image_size

    def setup(self, stage: str | None = None) -> None:
        """Read and decode the category once; later calls (one per Lightning stage) do nothing.
        ``stage`` is Lightning's (fit, test, ...): every stage needs the same data."""
        if self.test_set is not None:
            return
        self.layout = self.dataset.prepare(self.category)
        records = read_layout(self.layout)
        skip_corrupt = self.dataset.skip_corrupt
        origin = {"root": str(self.layout.root), "category": self.category}
        train_records = self.cache.load(records.train, skip_corrupt, {**origin, "split": "train"})
        test_records = self.cache.load(records.test, skip_corrupt, {**origin, "split": "test"})
        if not train_records:
            raise ValueError(f"every training image of '{self.category}' was skipped as corrupt")
        if records.val is not None:  # the dataset's own validation normals (MVTec AD 2)
            val_records = self.cache.load(records.val, skip_corrupt, {**origin, "split": "val"})
        else:
            train_records, val_records = split_validation(train_records, self.dataset.val_fraction, self.seed)
        augmentation = resolve_augmentation(
            self.dataset.augment,
            self.dataset.default_augmentation(self.category),
            f"{type(self.dataset).__name__} category '{self.category}'",
        )
        self.train_set = AnomalyImageDataset(train_records, self.cache, augmentation)
        self.val_set = AnomalyImageDataset(val_records, self.cache)
        self.test_set = AnomalyImageDataset(test_records, self.cache)
        log.info(
            "%s/%s: %d train, %d validation, %d test images (%d anomalous)",
            self.dataset.name,
            self.category,
            len(train_records),
            len(val_records),
            len(test_records),
            sum(record.label for record in test_records),
        )

    def _require_setup(self) -> None:
        if self.test_set is None:
            self.setup()

    def train_images_tensor(self) -> torch.Tensor:
        """The training images (validation excluded), not augmented, as ``N×C×H×W float32`` in [0, 1]."""
        self._require_setup()
        return self.train_set.images_tensor()

    def mean_image(self) -> torch.Tensor:
        """Per-pixel mean ``C×H×W`` of the non-augmented training images (for mean-image centering)."""
        if self._mean_image is None:
            self._mean_image = self.train_images_tensor().mean(dim=0)
        return self._mean_image

    def _loader(self, dataset: AnomalyImageDataset, shuffle: bool) -> DataLoader:
        workers = self.dataset.num_workers
        options: dict[str, Any] = (
            {"persistent_workers": True, "multiprocessing_context": worker_context()} if workers > 0 else {}
        )
        return DataLoader(
            dataset,
            batch_size=self.dataset.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            pin_memory=torch.cuda.is_available(),
            **options,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training images, augmented if the dataset enables it."""
        self._require_setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out normal training images, not augmented (empty when ``val_fraction`` is 0)."""
        self._require_setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test images (normal and anomalous) in file order."""
        self._require_setup()
        return self._loader(self.test_set, shuffle=False)
