"""The faithfulness checks of a tested run (the ``faithfulness`` config node, computed by
:mod:`anomaly_attn.maps.faithfulness`): which maps are checked, on which test images, and the metrics.json
block. Runs after the test set is scored; reads test images for analysis only, never to choose.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from anomaly_attn.common.objectives import objective_value
from anomaly_attn.maps.engine import MapEngine
from anomaly_attn.maps.faithfulness import FaithfulnessSettings, check_maps, subset_indices
from anomaly_attn.maps.selection_result import Candidate, SelectionResult
from anomaly_attn.maps.specs import MapSpec
from anomaly_attn.run.record import SELECTED

log = logging.getLogger(__name__)

# The maps every run checks besides the selected one and the best of each attention variant.
CHECKED_CONTROLS = ("residual_l2", "image_highpass")


def maps_to_check(engine: MapEngine, selection: SelectionResult | None) -> dict[str, MapSpec]:
    """The selected map, the best unfused map of each attention variant on validation (when selection
    ran), ``residual_l2`` and the model-free ``image_highpass``, by name."""
    maps = {SELECTED: engine.map_spec}
    if selection is not None:
        maps.update(best_per_variant(selection.candidates, selection.objective))
    maps.update({name: MapSpec(source=name) for name in CHECKED_CONTROLS})
    return maps


def best_per_variant(candidates: Sequence[Candidate], objective: str) -> dict[str, MapSpec]:
    """Per attention variant, the unfused candidate with the best validation objective (first on ties)."""
    best: dict[str, tuple[float, MapSpec]] = {}
    for candidate in candidates:
        spec = candidate.spec
        if spec.source != "attention" or spec.fusion != "none" or spec.variant is None:
            continue
        value = objective_value(candidate.validation, objective)
        if spec.variant not in best or value > best[spec.variant][0]:
            best[spec.variant] = (value, spec)
    return {variant: spec for variant, (_, spec) in best.items()}


def faithfulness_of_run(
    cfg: DictConfig, engine: MapEngine, test_set: Any, selection: SelectionResult | None
) -> dict[str, Any] | None:
    """The ``faithfulness`` block of a tested run (None when ``faithfulness.images`` is 0)."""
    settings = FaithfulnessSettings.from_config(cfg.get("faithfulness"))
    if settings.images == 0:
        return None
    start = time.perf_counter()
    labels = [int(record.label) for record in test_set.records]
    indices = subset_indices(labels, settings.images, settings.seed)
    if not indices:
        return {"skipped": "the test set has no anomalous image", "settings": settings.to_dict()}
    images = torch.stack([test_set[index]["image"] for index in indices])
    was_training = engine.model.training
    engine.model.eval()
    try:
        block = check_maps(engine, images, maps_to_check(engine, selection), settings)
    finally:
        engine.model.train(was_training)
    # Positions in the test set (rows of per_image_scores.csv), not paths: the block holds no wall-clock
    # time or location, so two runs of the same job write the same block (timing.faithfulness_s has it).
    block["test_indices"] = indices
    log.info("Faithfulness checks of %d map(s) on %d anomalous test image(s): %.1f s",
             len(block["maps"]), len(indices), time.perf_counter() - start)
    return block
