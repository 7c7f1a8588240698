"""The configured dataset: ``dataset._target_`` instantiated (after the safety check), its category.

Used by every job and by the sweep expansion (``category=glob(*)``), which must not need Lightning."""

from __future__ import annotations

import os

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_attn.config.safety import check_targets

# Config keys of a dataset yaml that describe it rather than being constructor arguments.
DATASET_META_KEYS = ("name",)


def default_num_workers() -> int:
    """Loader workers when the dataset leaves ``num_workers`` unset (null): one per core but one, at
    most 8 (decoded images are cached in memory, so workers only augment and collate)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def build_dataset(cfg: DictConfig):
    """Instantiate the dataset class named by ``dataset._target_`` (only this package's, torch's,
    Lightning's or timm's classes: see ``anomaly_attn.config.safety.check_targets``)."""
    check_targets(OmegaConf.to_container(cfg.dataset, resolve=True), "dataset")
    kwargs = {k: v for k, v in cfg.dataset.items() if k not in DATASET_META_KEYS}
    if "num_workers" in kwargs and kwargs["num_workers"] is None:  # unset: from the CPU count
        kwargs["num_workers"] = default_num_workers()
    return instantiate(OmegaConf.create(kwargs), _convert_="all")


def resolve_category(cfg: DictConfig, dataset) -> str:
    """The configured category (validated, canonical name), or the dataset's first one."""
    if cfg.category is None:
        return dataset.categories()[0]
    return dataset.check_category(str(cfg.category))
