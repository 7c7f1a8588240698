"""A Lightning logger of the user's own: every hyper-parameter and metric call as one JSON line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger


class JsonLinesLogger(Logger):
    def __init__(self, save_dir: str, name: str, filename: str = "log.jsonl") -> None:
        super().__init__()
        self._save_dir = save_dir
        self._name = name
        self.path = Path(save_dir) / filename

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def _write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._write({"name": self._name, "hparams": dict(params)})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._write({"step": step, "metrics": metrics})
