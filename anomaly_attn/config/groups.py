"""The entries of a config group whose entries are objects to build (``callbacks``, ``logger``), the
lightning-hydra-template way: every non-null entry names its class with ``_target_``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from anomaly_attn.config.safety import check_targets


def group_entries(
    nodes: DictConfig, group: str, what: str, example: str, job_values: Mapping[str, Any]
) -> Iterator[tuple[str, DictConfig, dict[str, Any]]]:
    """``(name, node, given)`` for every entry of ``group`` to instantiate: null/false entries are dropped,
    every ``_target_`` passes the safety check first, an entry without one is an error naming it (``what``
    one entry builds, ``example`` an entry's body), and ``given`` holds the ``job_values`` for the keys the
    entry left null or empty (e.g. a ``save_dir`` that is the job's run directory)."""
    check_targets(OmegaConf.to_container(nodes, resolve=True), group)
    for name, node in nodes.items():
        if node is None or node is False:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(
                f"{group}.{name} has no _target_: each entry of the {group} group is one {what}, e.g. "
                f"{name}: {{{example}}} (or null to drop it)."
            )
        given = {key: value for key, value in job_values.items() if key in node and node[key] in (None, "")}
        yield str(name), node, given
