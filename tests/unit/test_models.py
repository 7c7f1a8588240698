"""Backbones: the seed layer tables, shapes, registry and layer-lookup errors, gradients, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomaly_attn.models import (
    ReconstructionModel,
    ReconstructionOutput,
    create_model,
    layer_shapes,
    list_models,
    register_model,
    resolve_layer,
)
from anomaly_attn.models.conv_ae import SameConv2d

# Small, CPU-fast configurations of every backbone: (kwargs, image_size, in_channels).
SMALL_CONFIGS = {
    "conv_ae": ({"image_size": 64, "in_channels": 3}, 64, 3),
    "mnist_ae": ({"image_size": 28, "in_channels": 1}, 28, 1),
    "unet": ({"image_size": 64, "in_channels": 3, "width": 0.125}, 64, 3),
    "vae": ({"image_size": 28, "in_channels": 1, "channels": 8, "hidden_dim": 64}, 28, 1),
    # timm's tiny test network: resnet layout (act1, layer1 … layer4), 0.4 M parameters.
    "timm_ae": ({"image_size": 64, "in_channels": 3, "encoder": "test_resnet"}, 64, 3),
}

# The seed's conv_ae encoder table (docs/METHOD.md, "Backbones"): each conv is followed by InstanceNorm
# and ReLU.
# (index of the conv, in channels, out channels, kernel, stride, output side at 256²)
CONV_AE_CONVS = [
    (0, 3, 32, 4, 2, 128),
    (3, 32, 32, 4, 2, 64),
    (6, 32, 32, 4, 2, 32),
    (9, 32, 32, 3, 1, 32),
    (12, 32, 64, 4, 2, 16),
    (15, 64, 64, 3, 1, 16),
    (18, 64, 128, 4, 2, 8),
    (21, 128, 64, 3, 1, 8),
    (24, 64, 32, 3, 1, 8),
]


def make_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs, image_size, in_channels = SMALL_CONFIGS[name]
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    images = torch.rand(4, in_channels, image_size, image_size, generator=torch.Generator().manual_seed(1))
    return model, images


def test_registry_finds_every_backbone_module_without_a_manual_list() -> None:
    assert set(SMALL_CONFIGS) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_model_name_lists_registered_ones() -> None:
    message = r"unknown model 'conv_aee'\. Did you mean 'conv_ae'\? Valid: "
    with pytest.raises(ValueError, match=message) as err:
        create_model("conv_aee")
    assert all(name in str(err.value) for name in SMALL_CONFIGS)


def test_registering_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model 'conv_ae' is already registered by .*\.ConvAutoencoder"):
        register_model("conv_ae")(type("AnotherAutoencoder", (ReconstructionModel,), {}))


def test_unknown_kwarg_names_it_and_the_accepted_ones() -> None:
    with pytest.raises(TypeError, match=r"latent_size.*accepts: image_size, in_channels, bottleneck_dim"):
        create_model("conv_ae", image_size=64, latent_size=8)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        (
            "conv_ae",
            {"image_size": 100},
            r"image_size=100 must be a multiple of its total stride 32 and at least 64 "
            r"\(e.g. dataset.image_size=96",
        ),
        ("conv_ae", {"image_size": 32}, r"image_size=32 must be .* at least 64"),
        ("unet", {"image_size": 40}, r"multiple of its total stride 16"),
        ("vae", {"image_size": 30}, r"multiple of its total stride 4"),
        ("mnist_ae", {"image_size": 8}, r"image_size=8 must be at least 12"),
        ("conv_ae", {"in_channels": 0}, r"in_channels=0 must be positive"),
    ],
)
def test_invalid_image_size_or_channels_raise(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, **kwargs)


@pytest.mark.parametrize("image_size", [256, 64])
def test_conv_ae_encoder_matches_the_seed_table(image_size: int) -> None:
    model = create_model("conv_ae", image_size=image_size, in_channels=3)
    encoder = model.encoder
    assert isinstance(encoder, nn.Sequential) and len(encoder) == 28
    shapes = layer_shapes(model, image_size, 3)
    assert list(shapes) == [f"encoder.{index}" for index in range(28)]
    for index, conv_in, conv_out, kernel, stride, side_at_256 in CONV_AE_CONVS:
        conv, norm, relu = encoder[index], encoder[index + 1], encoder[index + 2]
        assert type(conv) is SameConv2d
        assert (conv.in_channels, conv.out_channels) == (conv_in, conv_out)
        assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
        assert conv.padding == (0, 0)  # "same" padding is applied inside forward
        assert type(norm) is nn.InstanceNorm2d and norm.affine and norm.num_features == conv_out
        assert type(relu) is nn.ReLU
        side = side_at_256 * image_size // 256
        for offset in range(3):
            assert shapes[f"encoder.{index + offset}"] == (conv_out, side, side)
    assert type(encoder[27]) is nn.Flatten
    latent_dim = 32 * (image_size // 32) ** 2
    assert shapes["encoder.27"] == (latent_dim,)
    assert latent_dim == {256: 2048, 64: 128}[image_size]
    assert model.bottleneck.in_features == latent_dim and model.bottleneck.out_features == 64
    assert model.default_layer == "encoder.16"


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad_before", "pad_after"),
    [(8, 4, 2, 1, 1), (7, 4, 2, 1, 2), (9, 4, 2, 1, 2), (8, 3, 2, 0, 1), (8, 3, 1, 1, 1), (5, 1, 2, 0, 0)],
)
def test_same_conv_pads_like_tensorflow(
    size: int, kernel: int, stride: int, pad_before: int, pad_after: int
) -> None:
    """Output ceil(i/s); total pad max((ceil(i/s)−1)·s + k − i, 0), the smaller half first."""
    out_size = -(-size // stride)
    x = torch.arange(1.0, size * size + 1).reshape(1, 1, size, size)
    padded = F.pad(x, (pad_before, pad_after, pad_before, pad_after))
    conv = SameConv2d(1, 1, kernel_size=kernel, stride=stride)
    # A one-hot kernel at (p, p) copies padded[s·i + p, s·j + p]: p = 0 probes the leading pad,
    # p = k − 1 the trailing one.
    for probe in (0, kernel - 1):
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, probe, probe] = 1.0
            conv.bias.zero_()
        expected = padded[..., probe::stride, probe::stride][..., :out_size, :out_size]
        assert torch.equal(conv(x), expected)


def test_mnist_ae_matches_the_seed() -> None:
    model = create_model("mnist_ae")
    expected_types = [
        nn.Conv2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d,
        nn.ReLU, nn.Flatten, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    assert [type(module) for module in model.encoder] == expected_types
    assert model.default_layer == "encoder.3"
    assert model.encoder[3].num_features == 16
    shapes = layer_shapes(model, 28, 1)
    assert shapes["encoder.3"] == (16, 7, 7)
    assert shapes["encoder.5"] == (32, 3, 3)
    assert shapes["encoder.7"] == (288,)
    assert shapes["encoder.10"] == (3,)
    output = model(torch.rand(5, 1, 28, 28))
    assert output.reconstruction.shape == (5, 1, 28, 28) and output.latent.shape == (5, 3)


def test_resolve_layer_returns_module_and_lists_valid_names_on_error() -> None:
    model = create_model("conv_ae", image_size=64)
    assert resolve_layer(model, "encoder.14") is model.encoder[14]
    with pytest.raises(ValueError) as error:
        resolve_layer(model, "encoder.99")
    message = str(error.value)
    assert "'encoder.99' is not a layer of conv_ae" in message
    assert "encoder.0, encoder.1," in message and message.endswith("encoder.27")


def test_unet_layer_names_are_the_five_down_blocks() -> None:
    model, images = make_model("unet")
    assert model.layer_names() == [f"encoder.{index}" for index in range(5)]
    shapes = layer_shapes(model, 64, 3)
    assert [shape[0] for shape in shapes.values()] == [8, 16, 32, 64, 64]
    assert [shape[1] for shape in shapes.values()] == [64, 32, 16, 8, 4]
    assert model.encode(images).shape == (4, 64 * 4 * 4)


def test_timm_ae_layers_are_the_timm_feature_stages() -> None:
    model = create_model("timm_ae", image_size=64, in_channels=1, encoder="resnet18")
    assert model.layer_names() == ["encoder.act1"] + [f"encoder.layer{index}" for index in range(1, 5)]
    assert model.default_layer == "encoder.layer3"
    assert model.total_stride == 32
    assert layer_shapes(model, 64, 1)["encoder.layer4"] == (512, 2, 2)
    assert model(torch.rand(2, 1, 64, 64)).latent.shape == (2, 512 * 2 * 2)


@pytest.mark.parametrize(
    ("encoder", "expected_layers"),
    [
        # timm flattens nested names in FeatureListNet (stages.0 -> stages_0), keeps them elsewhere.
        ("test_convnext", ["encoder.stages_0", "encoder.stages_1", "encoder.stages_2", "encoder.stages_3"]),
        ("test_efficientnet", [f"encoder.blocks.{index}" for index in range(5)]),
    ],
)
def test_timm_ae_names_feature_stages_of_other_families(encoder: str, expected_layers: list[str]) -> None:
    model = create_model("timm_ae", image_size=64, in_channels=3, encoder=encoder)
    assert model.layer_names() == expected_layers
    assert model.default_layer == expected_layers[-2]
    assert list(layer_shapes(model, 64, 3)) == expected_layers
    assert model(torch.rand(2, 3, 64, 64)).reconstruction.shape == (2, 3, 64, 64)


def test_timm_ae_rejects_unknown_encoder_and_explains_missing_weights(monkeypatch) -> None:
    import timm

    with pytest.raises(ValueError, match=r"'resnet_nope' is not a timm model"):
        create_model("timm_ae", encoder="resnet_nope")
    with pytest.raises(TypeError, match=r"pretrained must be a bool, got 'False'"):
        create_model("timm_ae", pretrained="False")

    def offline_create_model(*args, **kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(RuntimeError, match=r"unavailable offline.*model.pretrained=false.*cache"):
        create_model("timm_ae", image_size=64, pretrained=True)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_forward_shapes_layers_and_encode(name: str) -> None:
    model, images = make_model(name)
    model.eval()
    with torch.no_grad():
        output = model(images)
        latent = model.encode(images)
    assert isinstance(output, ReconstructionOutput)
    assert output.reconstruction.shape == images.shape
    assert 0.0 <= output.reconstruction.min() and output.reconstruction.max() <= 1.0
    assert output.latent.ndim == 2 and output.latent.shape[0] == images.shape[0]
    assert output.kl.shape == ()
    torch.testing.assert_close(latent, output.latent, rtol=0, atol=0)
    names = model.layer_names()
    assert names and model.default_layer in names
    assert all(name.startswith("encoder.") for name in names)
    assert list(layer_shapes(model, images.shape[-1], images.shape[1])) == names
    assert not model.training  # layer_shapes restores the mode it found


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_same_seed_gives_the_same_model(name: str) -> None:
    first, images = make_model(name)
    second, _ = make_model(name)
    first.eval(), second.eval()
    with torch.no_grad():
        assert torch.equal(first(images).reconstruction, second(images).reconstruction)


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_gradients_reach_every_parameter(name: str) -> None:
    model, images = make_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # One step first: timm zero-initialises the last BatchNorm of each residual block, which blocks
    # the gradient to that block's convolutions until the BatchNorm weight has moved.
    for _ in range(2):
        optimizer.zero_grad()
        output = model(images)
        (F.mse_loss(output.reconstruction, images) + output.kl).backward()
        optimizer.step()
    without_gradient = [
        parameter_name
        for parameter_name, parameter in model.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert without_gradient == []


@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_a_few_adam_steps_lower_the_loss_on_a_fixed_batch(name: str) -> None:
    model, images = make_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        output = model(images)
        loss = F.mse_loss(output.reconstruction, images) + output.kl
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_vae_kl_is_nonnegative_and_eval_is_deterministic() -> None:
    model, images = make_model("vae")
    model.train()
    train_outputs = [model(images) for _ in range(2)]
    assert all(output.kl.item() >= 0 for output in train_outputs)
    assert not torch.equal(train_outputs[0].reconstruction, train_outputs[1].reconstruction)
    model.eval()
    with torch.no_grad():
        first, second = model(images), model(images)
    assert first.kl.item() >= 0
    assert torch.equal(first.reconstruction, second.reconstruction)
    torch.testing.assert_close(first.latent, model.encode(images), rtol=0, atol=0)
