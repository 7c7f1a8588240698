"""What the test step keeps for the bootstrap intervals, and the metrics.json block it becomes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_attn.metrics.functional import pixel_auroc
from anomaly_attn.metrics.interval_inputs import IntervalInputs, IntervalSettings, collect_intervals


def feed(inputs: IntervalInputs, size: int = 32, images: int = 24, seed: int = 0) -> tuple[list, list]:
    """Half the images carry a square defect; `selected` sees it clearly, `residual_l2` hardly at all."""
    generator = torch.Generator().manual_seed(seed)
    all_maps, all_masks = [], []
    for start in range(0, images, 8):
        labels = torch.tensor([(start + i) % 2 for i in range(8)])
        masks = torch.zeros(8, 1, size, size)
        masks[labels == 1, :, 8:16, 8:16] = 1.0
        noise = torch.rand(8, 1, size, size, generator=generator)
        maps = {"selected": noise + 2.0 * masks, "residual_l2": noise + 0.02 * masks * noise}
        scores = {name: value.amax(dim=(1, 2, 3)) for name, value in maps.items()}
        inputs.update(maps, masks, scores, labels, torch.ones(8, dtype=torch.bool))
        all_maps.append(maps["selected"]), all_masks.append(masks)
    return all_maps, all_masks


def test_the_block_has_intervals_per_map_and_a_paired_difference_that_excludes_zero() -> None:
    inputs = IntervalInputs(["selected", "residual_l2"], IntervalSettings(resamples=200))
    maps, masks = feed(inputs)
    block = collect_intervals(inputs)
    assert block["resamples"] == 200 and set(block["maps"]) == {"selected", "residual_l2"}
    point = pixel_auroc(torch.cat(maps).numpy()[:, 0], torch.cat(masks).numpy()[:, 0])
    entry = block["maps"]["selected"]["pixel_auroc"]
    assert entry["low"] <= point <= entry["high"] and entry["high"] - entry["low"] < 0.05
    paired = block["paired"]["selected - residual_l2"]
    assert paired["pixel_auroc"]["low"] > 0 and paired["image_auroc"]["low"] > 0
    assert set(block["grid_bounds"]["selected"]) == {"pixel_aupro", "pixel_f1_max"}


def test_maps_are_area_downsampled_to_max_side_and_off_means_no_block() -> None:
    inputs = IntervalInputs(["selected", "residual_l2"], IntervalSettings(resamples=50, max_side=16))
    feed(inputs, size=64, images=8)
    assert inputs.maps["selected"][0].shape == (16, 16) and inputs.masks[0].shape == (16, 16)
    assert np.isin(np.unique(inputs.masks[0]), [0, 1]).all()
    off = IntervalInputs(["selected", "residual_l2"], IntervalSettings(resamples=0))
    feed(off, images=8)
    assert collect_intervals(off) is None and collect_intervals(None) is None


@pytest.mark.parametrize("node", [{"resamples": -1}, {"level": 1.0}, {"max_side": 4}])
def test_bad_settings_name_the_value(node: dict) -> None:
    with pytest.raises(ValueError, match="intervals: resamples="):
        IntervalSettings.from_config(node)
