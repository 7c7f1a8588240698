"""Datasets in the MVTec AD layout, the shared reader, and the datamodule.

One module per dataset (``textures``, ``mvtec``, ``btad``, ``folder``, ``fmnist``), each a class that
Hydra instantiates from ``conf/dataset/NAME.yaml``; ``layout.read_mvtec_layout`` reads all of them;
``datamodule.AnomalyDataModule`` splits and loads one category. Only the light, dependency-free names are
re-exported here, so importing an error class does not import Lightning.
"""

from anomaly_attn.data.errors import CorruptImageError, LayoutError, MissingDataError
from anomaly_attn.data.layout import CategoryLayout, LayoutDataset, Record, SplitRecords, read_mvtec_layout

__all__ = [
    "CategoryLayout",
    "CorruptImageError",
    "LayoutDataset",
    "LayoutError",
    "MissingDataError",
    "Record",
    "SplitRecords",
    "read_mvtec_layout",
]
