"""Restoration training (training/restoration.py): corrupted inputs, clean targets, generators kept
apart from the validation set's, its own seed stream, and a training step that uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anomaly_attn.jobs.train import train_job
from anomaly_attn.training.restoration import Restoration
from tests.conftest import compose_cfg, tiny_overrides
from tests.unit.test_speed import make_module


def test_off_by_default_and_auto_keeps_the_validation_generators_out() -> None:
    cfg = compose_cfg([])
    assert Restoration.from_config(cfg.restoration, cfg.validation.generators, 0) is None
    fmnist_like = Restoration.from_config({"probability": 0.5, "generators": "auto"}, ["shapes"], 0)
    assert fmnist_like.generators == ["cutpaste", "perlin", "scratch"] and not fmnist_like.shares_validation
    textures = Restoration.from_config({"probability": 0.5}, list(cfg.validation.generators), 0)
    assert textures.generators == ["scratch"]  # what the default mixed set leaves
    # A validation set that uses every generator: restoration uses them too, and says so.
    every = Restoration.from_config({"probability": 0.5}, ["cutpaste", "perlin", "scratch", "shapes"], 0)
    assert every.shares_validation and every.record()["shares_validation"] is True


def test_bad_settings_name_the_key_and_the_valid_values() -> None:
    with pytest.raises(ValueError, match=r"restoration\.probability=1\.5"):
        Restoration.from_config({"probability": 1.5}, [], 0)
    expected = r"restoration\.generators=\[.scratchy.\].*valid: auto or a list of cutpaste"
    with pytest.raises(ValueError, match=expected):
        Restoration.from_config({"probability": 0.5, "generators": ["scratchy"]}, [], 0)


def test_corruptions_are_seeded_by_step_and_touch_only_chosen_images() -> None:
    restoration = Restoration.from_config({"probability": 0.5, "generators": ["shapes"]}, [], 0)
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.3
    first = restoration.corrupt(images, step=7)
    assert torch.equal(first, restoration.corrupt(images, step=7))  # a resumed run draws the same
    assert not torch.equal(first, restoration.corrupt(images, step=8))
    changed = (first != images).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 16  # about half of the images
    other_seed = Restoration.from_config({"probability": 0.5, "generators": ["shapes"]}, [], 1)
    assert not torch.equal(first, other_seed.corrupt(images, step=7))  # the run's seed takes part


def test_the_training_step_feeds_the_corrupted_image_and_scores_against_the_clean_one() -> None:
    images = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.3
    seen: list[torch.Tensor] = []
    for restoration in (None, Restoration.from_config({"probability": 1.0, "generators": ["shapes"]}, [], 0)):
        module = make_module()
        module.restoration = restoration
        handle = module.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        loss = module.training_step({"image": images}, 0)
        handle.remove()
        if restoration is not None:
            corrupted = restoration.corrupt(images, 0)
            with torch.no_grad():
                out = module.model(module.network_input(corrupted))
                expected = module.reconstruction_loss(out.reconstruction.float(), images) + out.kl
            torch.testing.assert_close(loss.detach(), expected)
    clean_input, restoration_input = seen
    assert not torch.equal(clean_input, restoration_input)


def test_a_job_with_restoration_records_it(tmp_path: Path) -> None:
    cfg = compose_cfg(tiny_overrides(category="brick", **{"restoration.probability": "0.5"}))
    train_job(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = {"probability": 0.5, "generators": ["scratch"], "shares_validation": False}
    assert metrics["restoration"] == expected
