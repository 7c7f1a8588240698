"""The LightningModule's test-time maps: fusion and control maps as the configured map."""

from __future__ import annotations

import pytest
import torch

from anomaly_attn.training.module import AnomalyModule

MODEL = {"name": "conv_ae", "image_size": 64, "in_channels": 1}
ATTENTION = {"variant": "mean_abs_cam", "input": "residual", "smoothing_sigma": 0.0, "fusion": "none"}


def make_module(**attention: object) -> AnomalyModule:
    torch.manual_seed(0)
    module = AnomalyModule(MODEL, {"mse": 1.0}, {**ATTENTION, **attention}, layer="encoder.2")
    return module.eval()


def test_product_fusion_is_attention_times_residual() -> None:
    images = torch.rand(3, 1, 64, 64)
    plain, _ = make_module().engine.compute_maps(images)
    fused, _ = make_module(fusion="product").engine.compute_maps(images)
    torch.testing.assert_close(fused["selected"], plain["selected"] * plain["residual_l2"])
    torch.testing.assert_close(fused["residual_l2"], plain["residual_l2"])


def test_a_control_map_is_the_configured_map_and_refuses_fusion() -> None:
    images = torch.rand(2, 1, 64, 64)
    maps, _ = make_module(variant="residual_ssim").engine.compute_maps(images)
    torch.testing.assert_close(maps["selected"], maps["residual_ssim"])
    with pytest.raises(ValueError, match="map.fusion=none"):
        make_module(variant="residual_l2", fusion="product")


def test_unknown_fusion_is_refused_before_any_work() -> None:
    expected = r"map.fusion='mean' is not registered\. Valid: none, product, zsum"
    with pytest.raises(ValueError, match=expected):
        make_module(fusion="mean")
