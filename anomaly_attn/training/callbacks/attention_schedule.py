"""Training-time attention schedules other than the default ``every_n_steps`` (which lives in
``AnomalyModule.training_step``).

``last_batch`` reproduces the research code (docs/METHOD.md, "Training"): once per epoch, after the
ordinary step on the epoch's last batch, one extra step minimises ``weight · L_att`` on that batch
with a SECOND Adam optimizer over the same weights (its own moment estimates, the same learning rate
and weight decay as ``optimizer``).

Deliberate difference: the research code ran this step only when the last batch was *partial*
(``len(batch) < batch_size``), so it silently never ran when the training set size was a multiple
of the batch size. Here it runs on the last batch whatever its size: exactly once per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from anomaly_attn.maps import CONTROL_MAPS

log = logging.getLogger(__name__)

SCHEDULES = ("every_n_steps", "last_batch")


class LastBatchAttentionStep(pl.Callback):
    """One attention-loss step with a second Adam optimizer on the last training batch of each epoch.

    Args:
        lr: learning rate of the second optimizer.
        weight_decay: its weight decay.

    The loss, its weight, variant, layer and ``second_order`` come from the module's attention
    config (``AnomalyModule.attention_training_loss``). ``steps_run`` counts the steps taken; the
    optimizer state and the count are saved in checkpoints, so ``resume=true`` continues them.
    """

    def __init__(self, lr: float, weight_decay: float = 0.0) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer: torch.optim.Adam | None = None
        self.steps_run = 0
        self._pending_optimizer_state: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.optimizer is not None:
            return
        self.optimizer = torch.optim.Adam(
            pl_module.model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        if self._pending_optimizer_state is not None:
            self.optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
    ) -> None:
        if batch_idx != trainer.num_training_batches - 1:
            return
        weight = float(pl_module.attention_cfg["weight"])
        with torch.enable_grad():
            attention = pl_module.attention_training_loss(pl_module.network_input(batch["image"]))
            self.optimizer.zero_grad(set_to_none=True)
            (weight * attention).backward()
            self.optimizer.step()
            # Leave no gradient behind for the main optimizer's next step.
            self.optimizer.zero_grad(set_to_none=True)
        self.steps_run += 1
        pl_module.log("train/attention_loss", attention.detach(), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps_run = int(state_dict["steps_run"])
        optimizer_state = state_dict.get("optimizer")
        if optimizer_state is None:
            return
        if self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer_state)
        else:
            self._pending_optimizer_state = optimizer_state


def attention_schedule_callbacks(
    attention: Mapping[str, Any], optimizer: Mapping[str, Any]
) -> list[pl.Callback]:
    """The callbacks that ``map.schedule`` needs (none for ``every_n_steps``).

    Raises ValueError for an unknown schedule, naming the valid ones.
    """
    schedule = attention.get("schedule", "every_n_steps")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown map.schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if schedule != "last_batch":
        return []
    if attention.get("variant") in CONTROL_MAPS:
        log.warning("map=%s is a control map, not a gradient attention: no attention step will "
                    "run with map.schedule=last_batch.", attention.get("variant"))
        return []
    if float(attention.get("weight", 0.0)) <= 0 or attention.get("loss", "none") == "none":
        log.warning(
            "map.schedule=last_batch with map.weight=%s and map.loss=%s: no attention "
            "step will run (set map.weight > 0 and map.loss=mean|mean_std|expansion).",
            attention.get("weight"),
            attention.get("loss"),
        )
        return []
    return [
        LastBatchAttentionStep(
            lr=float(optimizer["lr"]), weight_decay=float(optimizer.get("weight_decay", 0.0))
        )
    ]
