"""Training throughput measured over training steps only (data waits between steps excluded).

Why not Lightning's ``ThroughputMonitor``: it logs a windowed rate to the loggers and needs a
``batch_size_fn``, but has no public accessor for the whole fit's rate, and its state is not saved in
checkpoints; ``metrics.json`` needs one number for the whole training, resumed attempts included
(``state_dict``), which these thirty lines give.
"""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class TrainingThroughput(pl.Callback):
    """Counts training images and the wall time spent inside training steps only."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._start
        self.images += len(batch["image"])

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.images = int(state_dict.get("images", 0))
        self.seconds = float(state_dict.get("seconds", 0.0))
