"""Find and read run directories (any folder holding config.yaml and, when complete, metrics.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Run:
    """One job's run directory: its metrics when complete, else why it is not."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"  # complete | failed | incomplete
    error: str = ""
    _config: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def value(self, key: str) -> Any:
        """A metric or field by dotted path, e.g. 'baselines.residual_l2.pixel_auroc'; a key that
        metrics.json lacks is looked up in the run's config.yaml (e.g. 'dataset.corruption')."""
        found = _lookup(self.metrics, key)
        if found is None and self.status == "complete":
            found = _lookup(self.config(), key)
        return found

    def config(self) -> dict[str, Any]:
        """The run's resolved config.yaml ({} when absent or unreadable)."""
        if self._config is None:
            path = self.path / "config.yaml"
            try:
                loaded = yaml.safe_load(path.read_text()) if path.exists() else {}
            except (OSError, yaml.YAMLError):
                loaded = {}
            self._config = loaded if isinstance(loaded, dict) else {}
        return self._config


def _lookup(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory below ``root``, sorted by path. Failed and incomplete runs are returned
    too (with their status), so reports list them instead of silently dropping them."""
    root = Path(root)
    candidates = {p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"}
    candidates |= {p.parent for p in root.rglob("metrics.json")}
    runs = []
    for path in sorted(candidates):
        if path.name == "report" or "wandb" in path.parts:
            continue
        metrics_file = path / "metrics.json"
        error_file = path / "error.txt"
        if metrics_file.exists():
            try:
                runs.append(Run(path, json.loads(metrics_file.read_text())))
            except json.JSONDecodeError as error:
                runs.append(Run(path, status="incomplete", error=f"unreadable metrics.json: {error}"))
        elif error_file.exists():
            first = (error_file.read_text().strip().splitlines() or [""])[0]
            runs.append(Run(path, status="failed", error=first))
        else:
            runs.append(Run(path, status="incomplete", error="no metrics.json (still running or killed)"))
    return runs
