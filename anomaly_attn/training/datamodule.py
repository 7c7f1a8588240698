"""The LightningDataModule of one category: ``data.splits.CategorySplits`` (splits, loaders, training-image
statistics) under Lightning's interface, so the Trainer calls its setup and loaders."""

from __future__ import annotations

import lightning as L

from anomaly_attn.data.splits import CategorySplits


class AnomalyDataModule(CategorySplits, L.LightningDataModule):
    """:class:`CategorySplits` as a LightningDataModule (same arguments: dataset, category, seed)."""

    def prepare_data(self) -> None:
        """Download or generate the category (Lightning runs this on one process only)."""
        self.dataset.prepare(self.category)
