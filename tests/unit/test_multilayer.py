"""Maps at many layers from one backward pass, and the per-layer α health measurement."""

from __future__ import annotations

import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.maps import (
    ALPHA_DEGENERATE_RATIO,
    AlphaHealth,
    alpha_health,
    alpha_variants,
    attention_map,
    attention_maps_all_layers,
    circular_padding,
    gradcam,
    layer_gradients,
    list_variants,
    multilayer,
    variants_valid_at,
)
from anomaly_attn.models import create_model

SINGLE_BACKWARD_VARIANTS = [variant for variant in list_variants() if variant != "expvae"]


def texture_images(size: int, count: int = 4) -> Tensor:
    """Real images: gray crops of scikit-image's shipped brick and gravel textures, ``count×1×size×size``."""
    crops = []
    for index in range(count):
        texture = getattr(skimage.data, ("brick", "gravel")[index % 2])()
        offset = 40 * index
        crop = torch.from_numpy(texture[offset : offset + 2 * size, offset : offset + 2 * size]).float() / 255
        crops.append(F.interpolate(crop[None, None], size=(size, size), mode="area")[0])
    return torch.stack(crops)


@pytest.fixture(scope="module")
def conv_ae() -> nn.Module:
    torch.manual_seed(0)
    return create_model("conv_ae", image_size=64, in_channels=1).eval()


@pytest.fixture(scope="module")
def conv_ae_health(conv_ae: nn.Module) -> dict[str, AlphaHealth]:
    return alpha_health(conv_ae, texture_images(64), conv_ae.layer_names())


@pytest.mark.parametrize(("model_name", "size"), [("conv_ae", 64), ("mnist_ae", 28)])
def test_maps_equal_attention_map_at_every_layer_and_variant(model_name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, image_size=size, in_channels=1).eval()
    images = texture_images(size, count=2)
    layers = model.layer_names()
    maps = attention_maps_all_layers(model, images, layers, SINGLE_BACKWARD_VARIANTS)
    expected_keys = [(layer, variant) for layer in layers for variant in SINGLE_BACKWARD_VARIANTS]
    assert sorted(maps) == sorted(expected_keys)
    for (layer, variant), layer_map in maps.items():
        assert layer_map.shape == (2, 1, size, size) and layer_map.grad_fn is None
        reference = attention_map(model, images, layer, variant).detach()
        torch.testing.assert_close(layer_map, reference, rtol=0, atol=1e-6, msg=f"{layer} {variant}")


def test_maps_do_not_depend_on_how_the_batch_is_chunked(
    conv_ae: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = texture_images(64, count=3)
    layers = ["encoder.0", "encoder.1", "encoder.14", "encoder.27"]
    whole_batch = attention_maps_all_layers(conv_ae, images, layers, SINGLE_BACKWARD_VARIANTS)
    monkeypatch.setattr(multilayer, "_CPU_CHUNK_BYTES", 1)  # one sample per chunk
    sample_by_sample = attention_maps_all_layers(conv_ae, images, layers, SINGLE_BACKWARD_VARIANTS)
    for key, layer_map in whole_batch.items():
        torch.testing.assert_close(sample_by_sample[key], layer_map, rtol=0, atol=1e-6)


def test_one_forward_and_one_backward_whatever_the_number_of_layers(
    conv_ae: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"encode": 0, "autograd.grad": 0}
    original_grad = torch.autograd.grad

    def counting_grad(*args: object, **kwargs: object) -> tuple:
        calls["autograd.grad"] += 1
        return original_grad(*args, **kwargs)

    def count_encode(*_: object) -> None:
        calls["encode"] += 1

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    images = texture_images(64, count=2)
    handle = conv_ae.encoder[0].register_forward_hook(count_encode)
    try:
        maps = attention_maps_all_layers(conv_ae, images, conv_ae.layer_names(), ["mean_abs_cam", "layercam"])
    finally:
        handle.remove()
    assert len(maps) == 2 * 28
    assert calls == {"encode": 1, "autograd.grad": 1}


def test_no_grad_inference_mode_and_training_flag(conv_ae: nn.Module) -> None:
    images = texture_images(64, count=2)
    layers = ["encoder.2", "encoder.16"]
    variants, size = ["gradcam_abs"], (32, 48)
    reference = attention_maps_all_layers(conv_ae, images, layers, variants, output_size=size)
    with torch.no_grad():
        under_no_grad = attention_maps_all_layers(conv_ae, images, layers, variants, size)
    with torch.inference_mode():
        inference_images = texture_images(64, count=2)
        under_inference = attention_maps_all_layers(conv_ae, inference_images, layers, variants, size)
    assert not conv_ae.training
    for key, layer_map in reference.items():
        assert layer_map.shape == (2, 1, 32, 48)
        torch.testing.assert_close(under_no_grad[key], layer_map)
        torch.testing.assert_close(under_inference[key], layer_map)
    assert all(not module._forward_hooks for module in conv_ae.modules())


def test_inplace_relu_after_a_captured_layer_changes_nothing() -> None:
    torch.manual_seed(0)
    model = create_model("mnist_ae", image_size=28, in_channels=1).eval()
    images = texture_images(28, count=2)
    layers = ["encoder.0", "encoder.3", "encoder.5"]
    reference = attention_maps_all_layers(model, images, layers, ["mean_abs_cam", "layercam"])
    assert model not in gradcam._MODELS_NEEDING_COPIES  # no in-place op: activations not copied
    model.encoder[1] = nn.ReLU(inplace=True)
    model.encoder[4] = nn.ReLU(inplace=True)
    variants = ["mean_abs_cam", "layercam"]
    for key, layer_map in attention_maps_all_layers(model, images, layers, variants).items():
        torch.testing.assert_close(layer_map, reference[key])
    assert gradcam._MODELS_NEEDING_COPIES[model]  # seen once: its later passes copy directly
    variants = ["mean_abs_cam", "layercam"]
    for key, layer_map in attention_maps_all_layers(model, images, layers, variants).items():
        torch.testing.assert_close(layer_map, reference[key])


def test_gradients_sharing_memory_are_each_normalised_once(conv_ae: nn.Module) -> None:
    # A Flatten's input gradient is a view of its output's: normalising both in place would divide the
    # shared memory twice. Together they must equal each computed alone.
    images = texture_images(64, count=2)
    together = layer_gradients(conv_ae, images, ["encoder.26", "encoder.27", "encoder.1"])
    for layer, computed in together.items():
        alone = layer_gradients(conv_ae, images, [layer])[layer]
        torch.testing.assert_close(computed.gradient, alone.gradient, rtol=1e-5, atol=1e-6)


def test_refusals_name_the_culprit_and_the_fix(conv_ae: nn.Module) -> None:
    images = texture_images(64, count=1)
    with pytest.raises(ValueError, match=r"\['expvae'\].*attention_map\(model, x, layer, variant\)"):
        attention_maps_all_layers(conv_ae, images, ["encoder.1"], ["mean_abs_cam", "expvae"])
    with pytest.raises(ValueError, match=r"'nope'.*'gradcam_pp'"):
        attention_maps_all_layers(conv_ae, images, ["encoder.1"], ["nope"])
    with pytest.raises(ValueError, match=r"'encoder\.99' is not a layer of conv_ae; valid layers: enc"):
        attention_maps_all_layers(conv_ae, images, ["encoder.1", "encoder.99"], ["mean_abs_cam"])
    with pytest.raises(ValueError, match=r"\['encoder\.1'\] more than once"):
        attention_maps_all_layers(conv_ae, images, ["encoder.1", "encoder.1"], ["mean_abs_cam"])
    with pytest.raises(ValueError, match=r"'decoder\.0' is not a layer of conv_ae"):  # one rule: layer_names
        attention_maps_all_layers(conv_ae, images, ["encoder.1", "decoder.0"], ["mean_abs_cam"])
    with pytest.raises(ValueError, match=r"layers is empty"):
        attention_maps_all_layers(conv_ae, images, [], ["mean_abs_cam"])
    assert all(not module._forward_hooks for module in conv_ae.modules())


def test_registry_marks_the_variants_built_from_alpha() -> None:
    assert alpha_variants() == ["expvae", "gradcam", "gradcam_abs", "mean_abs_cam"]
    degenerate = AlphaHealth(alpha_zero=0.1, alpha_circular=1e-8)
    assert degenerate.degenerate and degenerate.border_artifact
    assert variants_valid_at(degenerate) == ["gradcam_pp", "layercam"]
    assert variants_valid_at(AlphaHealth(alpha_zero=0.1, alpha_circular=0.1)) == list_variants()
    exactly_zero = AlphaHealth(alpha_zero=1e-8, alpha_circular=1e-8)
    assert exactly_zero.degenerate and not exactly_zero.border_artifact


def test_conv_ae_alpha_is_a_padding_artifact_except_after_instance_norm(
    conv_ae_health: dict[str, AlphaHealth],
) -> None:
    health = conv_ae_health
    # Convolution outputs (InstanceNorm next): alpha is float noise with either padding.
    for layer in ("encoder.0", "encoder.15"):
        assert health[layer].alpha_zero < 1e-6 and health[layer].alpha_circular < 1e-6
        assert health[layer].degenerate and not health[layer].border_artifact
    # ReLU outputs feeding conv -> InstanceNorm: alpha comes from the zero-padded border only.
    for layer in ("encoder.2", "encoder.14", "encoder.17"):
        assert health[layer].alpha_circular < 1e-6 < 1e-3 < health[layer].alpha_zero
        assert health[layer].border_artifact
    # InstanceNorm outputs: genuine alpha either way.
    for layer in ("encoder.1", "encoder.16"):
        assert health[layer].alpha_circular > 1e-2 and health[layer].alpha_zero > 1e-2
        assert not health[layer].degenerate
    # The last ReLU feeds Flatten (no norm after it), and flat layers have alpha = G.
    assert not health["encoder.26"].degenerate
    assert health["encoder.27"].alpha_zero == pytest.approx(1.0)
    assert all(not entry.zero_padded_convs for entry in health.values())
    degenerate = [layer for layer, entry in health.items() if entry.degenerate]
    assert len(degenerate) == 17  # nine convolutions and the eight ReLUs that feed the next one
    assert ALPHA_DEGENERATE_RATIO == 1e-3


def test_mnist_ae_spatial_layers_have_genuine_alpha() -> None:
    torch.manual_seed(0)
    model = create_model("mnist_ae", image_size=28, in_channels=1).eval()
    health = alpha_health(model, texture_images(28), ["encoder.0", "encoder.2", "encoder.3", "encoder.5"])
    for layer, entry in health.items():
        assert entry.alpha_circular > 1e-2 and entry.alpha_zero > 1e-2, layer
        assert not entry.degenerate and variants_valid_at(entry) == list_variants()


def test_health_is_deterministic_restores_training_and_reuses_given_gradients(conv_ae: nn.Module) -> None:
    images = texture_images(64, count=2)
    layers = ["encoder.1", "encoder.2"]
    conv_ae.train()
    try:
        first = alpha_health(conv_ae, images, layers)
        assert conv_ae.training
    finally:
        conv_ae.eval()
    assert alpha_health(conv_ae, images, layers) == first
    gradients = layer_gradients(conv_ae, images, layers)
    assert alpha_health(conv_ae, images, layers, gradients=gradients) == first


def test_circular_padding_restores_the_model_exactly(conv_ae: nn.Module) -> None:
    images = texture_images(64, count=2)
    with torch.no_grad():
        before = conv_ae(images).reconstruction
        with circular_padding(conv_ae) as zero_padded:
            inside = conv_ae(images).reconstruction
            assert conv_ae.encoder[0].pad_mode == "circular"
            assert conv_ae.decoder[3].padding_mode == "circular"
        after = conv_ae(images).reconstruction
    assert zero_padded == []
    assert (inside - before).abs().max() > 1e-5  # the borders did change inside the block
    assert torch.equal(before, after)
    assert conv_ae.encoder[0].pad_mode == "constant" and conv_ae.decoder[3].padding_mode == "zeros"
    assert all(not module._forward_pre_hooks for module in conv_ae.modules())
    with pytest.raises(RuntimeError, match="boom"), circular_padding(conv_ae):
        raise RuntimeError("boom")
    assert conv_ae.encoder[0].pad_mode == "constant"
    assert all(not module._forward_pre_hooks for module in conv_ae.modules())


def test_circular_padding_falls_back_on_maps_smaller_than_the_padding() -> None:
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 5, padding=2))
    with torch.no_grad():
        reference = model(torch.ones(1, 1, 1, 1))
        with circular_padding(model) as zero_padded:
            wrapped = model(torch.ones(1, 1, 1, 1))
    assert zero_padded == ["1"]  # 1×1 input: a pad of 1 wraps once, a pad of 2 cannot
    assert model[1].padding_mode == "zeros" and model[0].padding_mode == "zeros"
    assert not torch.equal(wrapped, reference)  # the first convolution did wrap
