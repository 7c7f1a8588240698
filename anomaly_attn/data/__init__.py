"""Datasets in the MVTec AD layout, the shared reader, and the datamodule.

One module per dataset (``textures``, ``mvtec``, ``btad``, ``visa``, ``mpdd``, ``mvtec_ad2``, ``folder``,
``fmnist``), each a class that Hydra instantiates from ``conf/dataset/NAME.yaml``; ``layout.read_layout``
reads all of them (``read_mvtec_layout``, or the dataset's own reader: VisA's split csv);
``datamodule.AnomalyDataModule`` splits and loads one category. Only the light, dependency-free names are
re-exported here, so importing an error class does not import Lightning.
"""

from anomaly_attn.data.errors import CorruptImageError, LayoutError, MissingDataError
from anomaly_attn.data.layout import (
    CategoryLayout,
    LayoutDataset,
    Record,
    SplitRecords,
    read_layout,
    read_mvtec_layout,
)

__all__ = [
    "CategoryLayout",
    "CorruptImageError",
    "LayoutDataset",
    "LayoutError",
    "MissingDataError",
    "Record",
    "SplitRecords",
    "read_layout",
    "read_mvtec_layout",
]
