"""Reconstruction and attention losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from anomaly_attn.training.losses import (
    ATTENTION_LOSSES,
    RECONSTRUCTION_LOSSES,
    ReconstructionLoss,
    attention_loss,
    reconstruction_loss,
)

RECONSTRUCTION = torch.tensor([[[[0.25, 0.5], [0.75, 1.0]]]])
TARGET = torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]])


def test_registries_hold_the_documented_names() -> None:
    assert sorted(RECONSTRUCTION_LOSSES) == ["bce", "l1", "mse", "ssim"]
    assert sorted(ATTENTION_LOSSES) == ["expansion", "mean", "mean_std", "none"]


def test_pixel_losses_hand_values() -> None:
    assert reconstruction_loss("mse", RECONSTRUCTION, TARGET).item() == pytest.approx((0.0625 + 0.0625) / 4)
    assert reconstruction_loss("l1", RECONSTRUCTION, TARGET).item() == pytest.approx(0.5 / 4)
    # BCE: -[t log p + (1 - t) log(1 - p)]; the pixel (1, 1) contributes 0 (log clamped by torch).
    expected_bce = (-math.log(0.75) - math.log(0.5) - math.log(0.75)) / 4
    assert reconstruction_loss("bce", RECONSTRUCTION, TARGET).item() == pytest.approx(expected_bce)


def test_ssim_loss_is_zero_for_identical_images_and_positive_otherwise() -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert reconstruction_loss("ssim", images, images.clone()).item() == pytest.approx(0.0, abs=1e-6)
    noisy = (images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert reconstruction_loss("ssim", noisy, images).item() > 0.1


def test_weighted_sum_and_components() -> None:
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    reconstruction = images.flip(-1)
    loss = ReconstructionLoss({"mse": 1.0, "ssim": 0.5})
    components = loss.components(reconstruction, images)
    assert set(components) == {"mse", "ssim"}
    expected = reconstruction_loss("mse", reconstruction, images) + 0.5 * reconstruction_loss(
        "ssim", reconstruction, images
    )
    torch.testing.assert_close(loss(reconstruction, images), expected)


def test_weighted_sum_is_differentiable() -> None:
    reconstruction = torch.rand(1, 1, 16, 16, requires_grad=True)
    ReconstructionLoss({"l1": 2.0, "ssim": 1.0})(reconstruction, torch.rand(1, 1, 16, 16)).backward()
    assert reconstruction.grad is not None and reconstruction.grad.abs().sum() > 0


def test_reconstruction_loss_errors_name_the_culprit() -> None:
    with pytest.raises(ValueError, match=r"\['perceptual'\].*'mse'"):
        ReconstructionLoss({"mse": 1.0, "perceptual": 1.0})
    with pytest.raises(ValueError, match="at least one term"):
        ReconstructionLoss({})
    with pytest.raises(ValueError, match=r"'huber'.*'bce'"):
        reconstruction_loss("huber", RECONSTRUCTION, TARGET)


MAPS = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # mean 1.5, unbiased std sqrt(5/3)


def test_attention_losses_hand_values() -> None:
    assert attention_loss("mean", MAPS).item() == pytest.approx(1.5)
    assert attention_loss("mean_std", MAPS).item() == pytest.approx(1.5 - 0.5 * math.sqrt(5 / 3))
    assert attention_loss("mean_std", MAPS, beta=1.0).item() == pytest.approx(1.5 - math.sqrt(5 / 3))
    sigmoid = [1 / (1 + math.exp(-v)) for v in (0.0, 1.0, 2.0, 3.0)]
    assert attention_loss("expansion", MAPS).item() == pytest.approx(sum(1 - s for s in sigmoid) / 4)
    assert attention_loss("none", MAPS).item() == 0.0


def test_attention_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"'max'.*'expansion'"):
        attention_loss("max", MAPS)
    with pytest.raises(TypeError, match="beta"):
        attention_loss("mean", MAPS, beta=0.5)
