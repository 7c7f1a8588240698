"""Jobs of a sweep share the decoded-image cache: a later job decodes nothing and its numbers are those of
a job without the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_attn.data.disk_cache import STATS
from anomaly_attn.jobs.train import train_job
from tests.conftest import compose_cfg, tiny_overrides

# Wall-clock numbers, the source commit and the run directory differ between any two runs; nothing else may.
VARYING_KEYS = {"timing", "provenance", "checkpoint"}


def _job(tmp_path: Path, name: str, layer: str, cache: bool) -> tuple[dict, int]:
    """A tiny training job (its own textures root, so no other test warmed the cache) and how many
    source images it decoded."""
    overrides = tiny_overrides(
        category="grass",
        layer=layer,
        validation="none",
        **{
            "selection.map": "fixed",
            "visualization.max_overlays": "0",
            "dataset.root": str(tmp_path / "textures"),
            "dataset.cache.enabled": str(cache).lower(),
            "dataset.cache.dir": str(tmp_path / "cache"),
        },
    )
    before = STATS["images_decoded"]
    metrics = train_job(compose_cfg(overrides), tmp_path / name)
    return metrics, STATS["images_decoded"] - before


@pytest.mark.slow
def test_the_second_job_of_a_sweep_decodes_nothing_and_gets_the_same_numbers(tmp_path: Path) -> None:
    plain, decoded_plain = _job(tmp_path, "no_cache", "encoder.16", cache=False)
    first, decoded_first = _job(tmp_path, "first", "encoder.1", cache=True)
    second, decoded_second = _job(tmp_path, "second", "encoder.16", cache=True)
    n_images = plain["n_train"] + plain["n_val"] + plain["n_test"]
    assert decoded_plain == decoded_first == n_images > 0
    assert decoded_second == 0
    assert first["layer"] == "encoder.1" and second["layer"] == "encoder.16"
    same = {k: v for k, v in plain.items() if k not in VARYING_KEYS}
    assert {k: v for k, v in second.items() if k not in VARYING_KEYS} == same
    assert 0.0 <= second["pixel_auroc"] <= 1.0
