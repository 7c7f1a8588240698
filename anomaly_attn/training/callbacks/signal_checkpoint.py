"""Save ``last.ckpt`` when a stop signal arrives during training (``training.interruption``)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from anomaly_attn.training.interruption import JobInterrupted, SignalGuard, active_guard

log = logging.getLogger(__name__)


class CheckpointOnSignal(pl.Callback):
    """While a single-process fit runs, a stop signal (SIGTERM, submitit's SIGUSR2) is acted on at the
    end of the current training batch: ``last_ckpt`` is written there (atomically, mid-epoch; resuming
    runs the epoch's remaining number of batches) and the job stops with ``JobInterrupted``.

    Multi-process fits keep the signal's immediate effect: a checkpoint needs every process at the
    same batch, and the signal reaches them at different ones; last.ckpt of the last epoch stays.
    """

    def __init__(self, last_ckpt: Path) -> None:
        self.last_ckpt = Path(last_ckpt)
        self._guard: SignalGuard | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        guard = active_guard()
        if guard is not None and trainer.world_size == 1:
            self._guard = guard
            guard.defer = True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._guard is None or self._guard.received is None:
            return
        trainer.save_checkpoint(str(self.last_ckpt))
        name = signal.Signals(self._guard.received).name
        log.warning(
            "Saved %s at epoch %d, step %d after %s; resume=true (automatic on a SLURM requeue) resumes.",
            self.last_ckpt, trainer.current_epoch, trainer.global_step, name,
        )
        raise JobInterrupted(self._guard.received)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal during the last validation: the fit is complete and last.ckpt written; stop here.
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.defer = False
            if guard.received is not None:
                raise JobInterrupted(guard.received)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._guard is not None:
            self._guard.defer = False
            self._guard = None
