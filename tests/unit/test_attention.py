"""Gradient attention, control maps and post-processing on small hand-built models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.maps import (
    CONTROL_MAPS,
    attention_map,
    control_map,
    gaussian_smooth,
    image_highpass,
    image_scores,
    list_variants,
    residual_highpass,
    residual_l2,
    residual_ssim,
)
from anomaly_attn.maps.specs import MapSpec, render

ALL_VARIANTS = ["expvae", "gradcam", "gradcam_abs", "gradcam_pp", "layercam", "mean_abs_cam"]
SQUARE = (slice(10, 20), slice(12, 22))  # rows, columns of the planted defect in a 32×32 image


class BrightnessEncoder(nn.Module):
    """Fixed encoder: channel 0 averages brightness, channel 1 is dead; stride 2, pooled to a 32-d latent."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0].fill_(1 / 9)
            conv.weight[1].fill_(-1 / 9)
            conv.bias.zero_()
        self.encoder = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.default_layer = "encoder.1"

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class SmoothEncoder(nn.Module):
    """Random smooth encoder (Softplus) whose gradient at layer ``encoder.0`` depends on the input."""

    def __init__(self, channels: int = 3, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        ).to(dtype)
        self.default_layer = "encoder.0"

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class LinearTail(nn.Module):
    """mnist_ae-like: conv, ReLU, flatten, Linear layers; attention at a Linear layer is 2-D (B×D)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * 4 * 4, 5),
            nn.Tanh(),
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class WeightConv(nn.Module):
    """A conv whose weight is a plain tensor, so gradcheck can differentiate with respect to it."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight_tensor = weight

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight_tensor, padding=1)


class FunctionalEncoder(nn.Module):
    def __init__(self, first_weight: Tensor, second_weight: Tensor) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            WeightConv(first_weight),
            nn.Softplus(),
            WeightConv(second_weight),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class Failing(nn.Module):
    """encode() raises after the target layer has run."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))

    def encode(self, x: Tensor) -> Tensor:
        self.encoder(x)
        raise RuntimeError("boom")


def defect_image(batch: int = 1) -> Tensor:
    image = torch.zeros(batch, 1, 32, 32)
    image[:, :, SQUARE[0], SQUARE[1]] = 1.0
    return image


def test_registry_lists_all_variants() -> None:
    assert list_variants() == ALL_VARIANTS


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_variant_peaks_inside_a_planted_defect(variant: str) -> None:
    model = BrightnessEncoder().eval()
    image = defect_image()
    maps = attention_map(model, image, "encoder.1", variant=variant)
    assert maps.shape == image.shape  # upsampled 16×16 -> 32×32
    row, col = divmod(int(maps[0, 0].argmax()), 32)
    assert SQUARE[0].start <= row < SQUARE[0].stop and SQUARE[1].start <= col < SQUARE[1].stop
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[SQUARE] = True
    mean_inside, mean_outside = maps[0, 0][inside].mean(), maps[0, 0][~inside].mean()
    assert mean_inside > 5 * mean_outside


def test_seed_and_gradcam_hand_values() -> None:
    """s = flatten(2x): G = 1 everywhere, RMS 1, so α = 1 / (1 + 1e-5) and every map is 2x·α."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(2.0)
    model = nn.Module()
    model.encoder = nn.Sequential(conv, nn.Flatten())
    model.encode = model.encoder
    image = torch.arange(16.0).view(1, 1, 4, 4) / 16
    expected = 2 * image / (1 + 1e-5)
    for variant in ("mean_abs_cam", "gradcam", "gradcam_abs", "layercam"):
        torch.testing.assert_close(attention_map(model, image, "encoder.0", variant), expected)


def test_expvae_with_one_latent_dim_equals_gradcam_abs() -> None:
    model = SmoothEncoder().eval()
    model.encoder.append(nn.Linear(12, 1))
    image = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        attention_map(model, image, "encoder.0", "expvae"),
        attention_map(model, image, "encoder.0", "gradcam_abs"),
    )


def test_expvae_latent_subsample_is_deterministic_and_differs_from_all_dims() -> None:
    torch.manual_seed(0)
    model = SmoothEncoder().eval()
    image = torch.rand(2, 1, 8, 8)
    subset = attention_map(model, image, "encoder.0", "expvae", latent_dims=3)
    torch.testing.assert_close(subset, attention_map(model, image, "encoder.0", "expvae", latent_dims=3))
    everything = attention_map(model, image, "encoder.0", "expvae")
    torch.testing.assert_close(everything, attention_map(model, image, "encoder.0", "expvae", latent_dims=12))
    assert not torch.allclose(subset, everything)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_map_does_not_depend_on_batch_mates(variant: str) -> None:
    torch.manual_seed(0)
    model = SmoothEncoder().eval()
    sample = torch.rand(1, 1, 8, 8)
    batch_mates = 20 * torch.rand(3, 1, 8, 8) - 10  # very different gradient magnitudes
    alone = attention_map(model, sample, "encoder.0", variant)
    together = attention_map(model, torch.cat([sample, batch_mates]), "encoder.0", variant)
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_gradcheck_second_order(variant: str) -> None:
    """With create_graph=True the map is exactly differentiable w.r.t. weights before and after the layer."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 5, 5, generator=generator, dtype=torch.float64)
    first = torch.randn(2, 1, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    second = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)

    def attention_of_weights(first_weight: Tensor, second_weight: Tensor) -> Tensor:
        model = FunctionalEncoder(first_weight, second_weight)
        # latent_dims bounds expvae's backward passes (the other variants ignore it).
        return attention_map(model, image, "encoder.1", variant, create_graph=True, latent_dims=3)

    assert torch.autograd.gradcheck(attention_of_weights, (first, second), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_first_order_reaches_weights_only_through_the_activation(variant: str) -> None:
    """create_graph=False (seed): weights after the layer get no gradient; True: they do, and grads differ."""
    torch.manual_seed(0)
    image = torch.rand(2, 1, 8, 8)
    grads = {}
    for create_graph in (False, True):
        torch.manual_seed(1)  # the same weights for both runs
        model = SmoothEncoder().eval()
        attention_map(model, image, "encoder.1", variant, create_graph=create_graph).sum().backward()
        grads[create_graph] = (model.encoder[0].weight.grad.clone(), model.encoder[2].weight.grad)
    first_order_before, first_order_after = grads[False]
    second_order_before, second_order_after = grads[True]
    assert first_order_before.abs().sum() > 0
    assert first_order_after is None or first_order_after.abs().sum() == 0
    assert second_order_after.abs().sum() > 0
    assert not torch.allclose(first_order_before, second_order_before)


def test_linear_layer_gives_a_constant_map_of_the_input_size() -> None:
    maps = attention_map(LinearTail(), torch.rand(2, 1, 8, 8), "encoder.3", "gradcam_abs")
    assert maps.shape == (2, 1, 8, 8)
    assert torch.allclose(maps, maps[:, :, :1, :1].expand_as(maps))


def test_output_size_is_respected() -> None:
    maps = attention_map(BrightnessEncoder(), defect_image(2), "encoder.0", output_size=(20, 24))
    assert maps.shape == (2, 1, 20, 24)


def test_works_under_no_grad_and_inference_mode_and_keeps_training_flag() -> None:
    model = BrightnessEncoder().train()
    reference = attention_map(model, defect_image(), "encoder.1").detach()
    with torch.no_grad():
        under_no_grad = attention_map(model, defect_image(), "encoder.1")
    with torch.inference_mode():
        inference_input = defect_image()
        under_inference = attention_map(model, inference_input, "encoder.1")
    assert model.training
    torch.testing.assert_close(under_no_grad, reference)
    torch.testing.assert_close(under_inference, reference)
    model.eval()
    attention_map(model, defect_image(), "encoder.1")
    assert not model.training


def test_frozen_model_on_input_without_grad() -> None:
    model = BrightnessEncoder().requires_grad_(False)
    maps = attention_map(model, defect_image(), "encoder.1", "mean_abs_cam")
    torch.testing.assert_close(maps, attention_map(BrightnessEncoder(), defect_image(), "encoder.1").detach())


def test_inplace_relu_after_the_layer_does_not_change_the_map() -> None:
    model = BrightnessEncoder()
    reference = attention_map(model, defect_image(), "encoder.0", "gradcam_abs")
    model.encoder[1] = nn.ReLU(inplace=True)
    torch.testing.assert_close(attention_map(model, defect_image(), "encoder.0", "gradcam_abs"), reference)


def test_no_hook_left_behind_after_an_exception() -> None:
    model = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        attention_map(model, torch.rand(1, 1, 4, 4), "encoder.0")
    assert not model.encoder[0]._forward_hooks
    model = BrightnessEncoder()
    attention_map(model, defect_image(), "encoder.1")
    assert all(not module._forward_hooks for module in model.modules())


def test_unknown_layer_lists_encoder_layers_first() -> None:
    model = BrightnessEncoder()
    model.decoder = nn.Sequential(nn.Conv2d(2, 1, 1))
    with pytest.raises(
        ValueError, match=r"'encoder\.9' is not a layer .*layers: encoder\.0, encoder\.1, .*encoder, decoder"
    ):
        attention_map(model, defect_image(), "encoder.9")


def test_unknown_variant_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*'gradcam_pp'"):
        attention_map(BrightnessEncoder(), defect_image(), "encoder.1", "nope")


def test_layer_not_on_the_encode_path_is_an_error() -> None:
    model = BrightnessEncoder()
    model.decoder = nn.Sequential(nn.Conv2d(2, 1, 1))
    with pytest.raises(ValueError, match="ran 0 times"):
        attention_map(model, defect_image(), "decoder.0")


def test_a_map_spec_renders_smoothing_and_fusion_from_its_bases() -> None:
    model = BrightnessEncoder().eval()
    x = defect_image(2)
    x[1] *= 0.5
    reconstruction = torch.full_like(x, 0.1)
    attention = attention_map(model, x - reconstruction, "encoder.1")
    residual = residual_l2(x, reconstruction)
    spec = MapSpec("attention", "encoder.1", "mean_abs_cam", "residual")
    bases = {spec.base_key: attention, ("residual_l2",): residual}
    torch.testing.assert_close(render(spec, bases), attention)
    smoothed = render(replace(spec, smoothing_sigma=1.5), bases)
    torch.testing.assert_close(smoothed, gaussian_smooth(attention, 1.5))
    product = render(replace(spec, fusion="product"), bases)
    torch.testing.assert_close(product, attention * residual)
    # The product keeps the scale differences between images (image 1 is dimmer: lower peak).
    assert product[1].max() < product[0].max()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"variant": "nope"}, "map.variant='nope' is not registered"),
        ({"input": "latent"}, "map.input='latent' is not registered"),
        ({"fusion": "mean"}, "map.fusion='mean' is not registered"),
        ({"smoothing_sigma": -1.0}, "smoothing_sigma must be >= 0"),
    ],
)
def test_a_map_spec_rejects_bad_values(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fields = {"source": "attention", "layer": "encoder.1", "variant": "mean_abs_cam", "input": "residual"}
        MapSpec(**{**fields, **options})


def test_expvae_rejects_a_latent_dims_below_one() -> None:
    with pytest.raises(ValueError, match="latent_dims must be >= 1"):
        attention_map(BrightnessEncoder().eval(), defect_image(), "encoder.1", variant="expvae",
                      latent_dims=0)


# ---- control maps ----


def test_residual_l2_hand_value() -> None:
    x = torch.tensor([[[[1.0, 0.0]], [[0.5, 0.0]]]])  # 1×2×1×2
    reconstruction = torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]])
    torch.testing.assert_close(residual_l2(x, reconstruction), torch.tensor([[[[0.625, 0.5]]]]))


def test_residual_ssim_is_zero_for_identical_images_and_high_on_a_defect() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    identical = residual_ssim(x, x.clone())
    assert identical.shape == (2, 1, 32, 32)
    assert identical.abs().max() < 1e-5
    damaged = x.clone()
    damaged[:, :, 12:20, 12:20] = 0.5
    ssim_map = residual_ssim(x, damaged)
    assert ssim_map[:, :, 12:20, 12:20].mean() > 5 * ssim_map[:, :, :4, :4].mean()


def test_image_highpass_peaks_on_a_planted_edge() -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[..., 20:] = 1.0  # vertical step between columns 19 and 20
    highpass = image_highpass(image, sigma=1.0)
    assert highpass.shape == (1, 1, 32, 32)
    column_profile = highpass[0, 0].mean(dim=0)
    assert int(column_profile.argmax()) in (19, 20)
    assert column_profile[19:21].min() > 10 * column_profile[:10].max()


def test_residual_highpass_ignores_a_constant_shift_and_finds_a_spot() -> None:
    x = torch.full((1, 1, 32, 32), 0.6)
    reconstruction = torch.full_like(x, 0.4)  # uniform residual: no high frequencies
    reconstruction[..., 8:11, 20:23] = 0.0
    highpass = residual_highpass(x, reconstruction, sigma=1.0)
    row, col = divmod(int(highpass[0, 0].argmax()), 32)
    assert 8 <= row < 11 and 20 <= col < 23
    assert highpass[0, 0, 24:, :8].max() < 1e-6


def test_control_registry_dispatches_and_rejects_unknown() -> None:
    x, reconstruction = defect_image(2), torch.zeros(2, 1, 32, 32)
    for name in CONTROL_MAPS:
        assert control_map(name, x, reconstruction).shape == (2, 1, 32, 32)
    torch.testing.assert_close(
        control_map("image_highpass", x, reconstruction, sigma=1.0), image_highpass(x, 1.0)
    )
    with pytest.raises(ValueError, match=r"'nope'.*'residual_ssim'"):
        control_map("nope", x, reconstruction)


# ---- post-processing ----


def test_gaussian_smooth_matches_scipy_and_sigma_zero_is_identity() -> None:
    maps = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert gaussian_smooth(maps, 0.0) is maps
    smoothed = gaussian_smooth(maps, 1.5)
    # torch 'reflect' padding is scipy's 'mirror' mode (edge pixel not repeated).
    expected = np.stack([scipy.ndimage.gaussian_filter(m[0].numpy(), 1.5, mode="mirror") for m in maps])
    np.testing.assert_allclose(smoothed[:, 0].numpy(), expected, atol=1e-10)
    constant = torch.full((1, 1, 5, 5), 3.0)
    torch.testing.assert_close(gaussian_smooth(constant, 10.0), constant)  # radius clipped to the map size
    with pytest.raises(ValueError, match="sigma"):
        gaussian_smooth(maps, -1.0)


def test_image_scores_hand_values() -> None:
    maps = torch.arange(200.0).view(2, 1, 10, 10)
    torch.testing.assert_close(image_scores(maps), torch.tensor([99.0, 199.0]))
    torch.testing.assert_close(image_scores(maps, "topk_mean", topk_percent=1.0), torch.tensor([99.0, 199.0]))
    torch.testing.assert_close(image_scores(maps, "topk_mean", topk_percent=3.0), torch.tensor([98.0, 198.0]))
    with pytest.raises(ValueError, match=r"'median'.*'topk_mean'"):
        image_scores(maps, "median")


def test_gradcam_pp_without_a_graph_equals_the_differentiable_form_and_keeps_its_inputs() -> None:
    # Under no_grad the variant runs its arithmetic in place on its own temporaries; the bits must equal
    # the differentiable form's and the activation and gradient it was given must be unchanged.
    from anomaly_attn.maps.gradient import gradcam_pp_map

    torch.manual_seed(0)
    activation = torch.relu(torch.randn(3, 8, 16, 16))
    gradient = torch.randn(3, 8, 16, 16)
    activation_before, gradient_before = activation.clone(), gradient.clone()
    with torch.no_grad():
        fast = gradcam_pp_map(activation, gradient)
    assert torch.equal(activation, activation_before) and torch.equal(gradient, gradient_before)
    differentiable = gradcam_pp_map(activation.requires_grad_(True), gradient)
    assert differentiable.requires_grad
    assert torch.equal(fast, differentiable.detach())
    assert fast.abs().sum() > 0
