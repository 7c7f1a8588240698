"""`python -m anomaly_attn.layers`: layer names and shapes per model, what flat layers do, and α health."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from anomaly_attn.cli.layers import describe_layers, main, measurement_images
from anomaly_attn.maps import alpha_health, attention_map
from anomaly_attn.models import create_model
from anomaly_attn.training.module import AnomalyModule
from anomaly_attn.training.trainer import build_module, save_model_checkpoint
from tests.conftest import compose_cfg


def table_rows(out: str) -> list[str]:
    """The layer rows of the printed table (indented lines after the column header)."""
    return [line for line in out.splitlines() if line.startswith("  ")][1:]


def test_conv_ae_layers_match_the_seed_table_at_the_configured_size() -> None:
    layers = describe_layers(compose_cfg(["model=conv_ae", "dataset.image_size=64"])).layers
    assert [layer.name for layer in layers] == [f"encoder.{i}" for i in range(28)]
    by_name = {layer.name: layer for layer in layers}
    # 64 px input: five stride-2 convolutions, 1 channel in (textures are gray).
    assert by_name["encoder.0"].shape == (32, 32, 32)
    assert by_name["encoder.14"].shape == (64, 4, 4)
    assert by_name["encoder.21"].shape == (64, 2, 2)
    assert by_name["encoder.27"].shape == (32 * 2 * 2,)
    assert [layer.name for layer in layers if layer.is_default] == ["encoder.16"]
    assert [layer.name for layer in layers if layer.is_flat] == ["encoder.27"]


@pytest.mark.parametrize(
    ("model", "size", "default", "flat"),
    [
        ("unet", 64, "encoder.3", []),
        ("vae", 64, "encoder.2", ["encoder.4", "encoder.5", "encoder.6"]),
        ("timm_ae", 64, "encoder.layer3", []),
        ("mnist_ae", 28, "encoder.3", ["encoder.7", "encoder.8", "encoder.9", "encoder.10"]),
    ],
)
def test_every_model_yaml_composes_and_marks_default_and_flat_layers(
    model: str, size: int, default: str, flat: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main([f"model={model}", f"dataset.image_size={size}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model={model} image_size={size} in_channels=1")
    marked_default = [line.split()[0] for line in table_rows(out) if "default" in line]
    marked_flat = [line.split()[0] for line in table_rows(out) if "flat" in line]
    assert marked_default == [default]
    assert marked_flat == flat


def test_shapes_follow_the_image_size(capsys: pytest.CaptureFixture) -> None:
    assert main(["model=unet", "dataset.image_size=128"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in table_rows(capsys.readouterr().out)}
    # width 0.125 of the seed's (64, 128, 256, 512, 512) channels; stride 2 from the second block.
    assert rows == {
        "encoder.0": "8×128×128",
        "encoder.1": "16×64×64",
        "encoder.2": "32×32×32",
        "encoder.3": "64×16×16",
        "encoder.4": "64×8×8",
    }


def test_unknown_model_bad_size_and_unknown_layer_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["model=resnet"]) == 2
    assert "model=resnet is not a config of the model group. Did you mean 'unet'?" in capsys.readouterr().err
    assert main(["model=conv_ae", "dataset.image_size=48"]) == 2
    assert "multiple of its total stride 32" in capsys.readouterr().err
    assert main(["model=conv_ae", "layer=encoder.99"]) == 2
    captured = capsys.readouterr()
    assert "encoder.99" in captured.err and "encoder.21" in captured.out


def test_a_flat_layer_gives_a_constant_map_per_image_that_still_scores_images() -> None:
    torch.manual_seed(0)
    model = create_model("conv_ae", image_size=64, in_channels=1).eval()
    images = torch.rand(3, 1, 64, 64)
    maps = attention_map(model, images, "encoder.27", "mean_abs_cam").detach()
    assert maps.shape == (3, 1, 64, 64)
    flat = maps.flatten(1)
    assert torch.equal(flat.max(dim=1).values, flat.min(dim=1).values), "constant over each image"
    assert len(set(flat[:, 0].tolist())) == 3, "but different between images (an image score)"


def test_module_warns_when_the_attention_layer_is_flat(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def build(layer: str) -> None:
        AnomalyModule(
            model={"name": "conv_ae", "image_size": 64, "in_channels": 1},
            loss_terms={"mse": 1.0},
            attention={"variant": "mean_abs_cam"},
            layer=layer,
        )

    # The handler goes on the engine's logger itself, enabled: an in-process Hydra job of an earlier test
    # may have configured logging (dictConfig) so that existing loggers are disabled or do not propagate.
    engine_log = logging.getLogger("anomaly_attn.maps.engine")
    monkeypatch.setattr(engine_log, "disabled", False)
    engine_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="anomaly_attn.maps.engine"):
            build("encoder.14")
            assert not caplog.records
            build("encoder.27")
    finally:
        engine_log.removeHandler(caplog.handler)
    records = list({id(record): record for record in caplog.records}.values())  # once if it propagated too
    assert len(records) == 1
    message = records[0].getMessage()
    assert "encoder.27" in message and "flat" in message and "anomaly_attn.layers" in message


def test_conv_ae_marks_the_layers_where_alpha_is_measured_degenerate(capsys: pytest.CaptureFixture) -> None:
    assert main(["model=conv_ae", "dataset.image_size=64"]) == 0
    out = capsys.readouterr().out
    assert "16 held-out validation images of textures/brick" in out
    rows = {row.split()[0]: row for row in table_rows(out)}
    artifact = [name for name, row in rows.items() if "α degenerate (padding artifact)" in row]
    zero = [name for name, row in rows.items() if "α degenerate (zero)" in row]
    assert zero == [f"encoder.{i}" for i in range(0, 27, 3)]  # convolutions: InstanceNorm next
    assert artifact == [f"encoder.{i}" for i in range(2, 24, 3)]  # ReLUs feeding conv -> InstanceNorm
    assert "mean_abs_cam" in rows["encoder.2"] and "layercam" not in rows["encoder.2"]
    alpha_zero, alpha_circular = (float(value) for value in rows["encoder.14"].split()[2:4])
    assert alpha_circular < 1e-6 < 1e-3 < alpha_zero
    alpha_zero, alpha_circular = (float(value) for value in rows["encoder.16"].split()[2:4])
    assert min(alpha_zero, alpha_circular) > 1e-2


def test_alpha_vanishes_at_a_degenerate_layer_but_layercam_survives() -> None:
    torch.manual_seed(0)
    model = create_model("conv_ae", image_size=64, in_channels=1).eval()
    images = torch.rand(2, 1, 64, 64)

    def peak(layer: str, variant: str) -> float:
        return attention_map(model, images, layer, variant).detach().abs().max().item()

    for variant in ("mean_abs_cam", "gradcam_abs", "expvae"):
        assert peak("encoder.15", variant) < 1e-5 < 1e-2 < peak("encoder.16", variant)
    assert peak("encoder.15", "layercam") > 1.0  # element-wise ReLU(G) survives


def test_without_the_dataset_the_measurement_says_it_used_random_images(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["model=mnist_ae", "dataset=mvtec", f"dataset.root={tmp_path}", "dataset.image_size=28"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model=mnist_ae image_size=28 in_channels=3")
    assert "16 seeded random images, NOT real data: dataset mvtec could not be prepared" in out
    assert not any("degenerate" in row for row in table_rows(out))  # BatchNorm, not InstanceNorm


def test_a_checkpoint_is_measured_with_its_weights_on_its_attention_input(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = compose_cfg(["model=conv_ae", "dataset.image_size=64"])
    torch.manual_seed(123)  # weights unlike the CLI's untrained seed-0 model
    module = build_module(cfg).eval()
    module.set_mean_image(torch.full((1, 64, 64), 0.5))
    checkpoint = tmp_path / "checkpoints" / "model.ckpt"
    save_model_checkpoint(module, checkpoint)
    assert main([f"ckpt_path={checkpoint}"]) == 0
    out = capsys.readouterr().out
    assert f"weights of {checkpoint}, attention input: x − x̂" in out
    images, description = measurement_images(cfg)
    assert description.startswith("16 held-out validation images") and description in out
    with torch.no_grad():
        residual = images - module(images).reconstruction
    expected = alpha_health(module.model, residual, ["encoder.1", "encoder.14"])
    rows = {row.split()[0]: row.split()[2:4] for row in table_rows(out)}
    for layer, health in expected.items():
        assert rows[layer] == [f"{health.alpha_zero:.1e}", f"{health.alpha_circular:.1e}"]
