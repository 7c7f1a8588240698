"""Find and read run directories (any folder holding config.yaml and, when complete, metrics.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """One job's run directory: its metrics when complete, else why it is not."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "complete"  # complete | failed | incomplete
    error: str = ""

    def value(self, key: str) -> Any:
        """A metric or field by dotted path, e.g. 'baselines.residual_l2.pixel_auroc'."""
        node: Any = self.metrics
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
