"""``val_objective``: the selection objective of the residual map on the synthetic validation set, logged
after every validation epoch, so that ``selection.monitor=val_objective`` keeps the checkpoint that
detects synthetic anomalies best rather than the one that reconstructs best (they differ: the lowest
reconstruction loss can come from a model that also reconstructs the anomalies).

The map is ``residual_l2``: every model has it, it needs no gradient, and it is the map the selected one
is compared with. The set is the one map selection reads (held-out normals plus synthetic anomalies, never
test images), so checkpoint and map are chosen on the same validation data.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.config.resolvers import VALIDATION_OBJECTIVE
from anomaly_attn.data.synthetic_validation import SyntheticValidation
from anomaly_attn.maps.scoring import score_specs_on
from anomaly_attn.maps.specs import MapSpec


class ValidationObjective(pl.Callback):
    """Logs ``val_objective`` (``objective`` of ``residual_l2`` on ``synthetic``) after each validation
    epoch (not during the sanity check)."""

    def __init__(self, synthetic: SyntheticValidation, objective: str, batch_size: int, max_map_size: int
                 ) -> None:
        self.synthetic, self.objective = synthetic, objective
        self.batch_size, self.max_map_size = batch_size, max_map_size
        self.spec = MapSpec(source="residual_l2")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        metrics = score_specs_on(
            pl_module.engine, self.synthetic.images, self.synthetic.masks, self.synthetic.labels, [self.spec],
            batch_size=self.batch_size, max_map_size=self.max_map_size,
            description="val_objective: residual maps of the synthetic validation set",
        )[self.spec]
        value = objective_value(metrics, self.objective)
        pl_module.log(VALIDATION_OBJECTIVE, value, on_epoch=True, prog_bar=True, sync_dist=True)
