"""List a backbone's addressable layers with their output shapes and a measured α health per layer.

    python -m anomaly_attn.layers                                  # conv_ae at the dataset's image size
    python -m anomaly_attn.layers model=unet dataset.image_size=128
    python -m anomaly_attn.layers model=mnist_ae dataset=fmnist
    python -m anomaly_attn.layers ckpt_path=outputs/.../checkpoints/model.ckpt   # a trained model

Takes the same overrides as ``anomaly_attn.train`` (the config is composed the same way), so the
names printed are exactly what ``layer=`` and ``'layer=glob(...)'`` accept; with ``ckpt_path=`` the
model, dataset and category come from the checkpoint as in ``anomaly_attn.evaluate``. The default layer
is marked, and so are flat layers (``B×D`` output, e.g. a Flatten or Linear layer): attention there has
no spatial extent, so its map is constant over each image: it ranks images, not the pixels within one.

Each layer also gets ``mean|α_c| / mean|G|`` measured on real images (up to 16 held-out validation
images of the configured dataset; seeded random images, said so, when the dataset cannot be prepared)
with the model's padding (``alpha_zero``) and with every convolution padded circularly
(``alpha_circular``); see ``anomaly_attn.maps.health``. A layer whose α vanishes under circular
padding is marked "α degenerate": the α-based variants (mean_abs_cam, gradcam, gradcam_abs, expvae) are not
attention there, only the border effect of zero padding (or float noise); ``layercam`` and
``gradcam_pp`` (built from ``ReLU(G)``) still are. On conv_ae these are the convolutions and the ReLUs
that feed the next convolution → InstanceNorm.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from anomaly_attn.cli.errors import debug_requested, describe, print_error, take_debug_flag
from anomaly_attn.cli.preflight import compose_config
from anomaly_attn.config.paths import with_user_config_dirs
from anomaly_attn.maps.gradient import alpha_variants
from anomaly_attn.maps.health import AlphaHealth, alpha_health

# Images the α health is measured on: enough for a stable mean, few enough to stay a quick look-up.
MAX_MEASUREMENT_IMAGES = 16


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, output shape (no batch dimension), role and α health."""

    name: str
    shape: tuple[int, ...]
    is_default: bool
    is_selected: bool
    health: AlphaHealth | None = None

    @property
    def is_flat(self) -> bool:
        """True when the output is not a C×h×w feature map, so a map from it cannot localize."""
        return len(self.shape) != 3


@dataclass(frozen=True)
class LayerReport:
    """The layer table of a model and what its α health was measured on (``measured_on``, one line)."""

    layers: list[LayerInfo]
    measured_on: str

    @property
    def zero_padded_convs(self) -> tuple[str, ...]:
        """Convolutions that kept their padding in the circular pass (their input was too small)."""
        return next((layer.health.zero_padded_convs for layer in self.layers if layer.health), ())


def measurement_images(cfg: DictConfig, max_images: int = MAX_MEASUREMENT_IMAGES) -> tuple[Tensor, str]:
    """Up to ``max_images`` held-out validation images (N×C×H×W in [0, 1]) of the configured dataset and
    category, and a description; seeded uniform random images, and the reason, when the dataset cannot
    be prepared (not on disk, a download it is not allowed to make, an empty validation split)."""
    from anomaly_attn.data.build import build_dataset, resolve_category
    from anomaly_attn.data.splits import CategorySplits

    try:
        dataset = build_dataset(cfg)
        category = resolve_category(cfg, dataset)
        datamodule = CategorySplits(dataset, category=category, seed=int(cfg.seed))
        datamodule.setup("fit")
        val_set = datamodule.val_set
        if len(val_set) == 0:
            raise ValueError("its validation split is empty (dataset.val_fraction=0)")
        images = torch.stack([val_set[index]["image"] for index in range(min(max_images, len(val_set)))])
        return images, f"{len(images)} held-out validation images of {cfg.dataset.name}/{category}"
    except (OSError, ValueError, RuntimeError, HydraException) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        size, channels = int(cfg.model.image_size), int(cfg.model.in_channels)
        generator = torch.Generator().manual_seed(int(cfg.seed))
        images = torch.rand(max_images, channels, size, size, generator=generator)
        return images, (
            f"{max_images} seeded random images, NOT real data: dataset {cfg.dataset.name} could not be "
            f"prepared ({reason})"
        )


def _measured_model(cfg: DictConfig, images: Tensor) -> tuple[nn.Module, Tensor, str]:
    """(backbone, what its attention is computed from, description of the weights and that input)."""
    if cfg.get("ckpt_path"):
        from anomaly_attn.training.checkpoint import load_module

        module = load_module(cfg.ckpt_path, cfg)
        network_input = module.network_input(images)
        if module.attention_cfg.get("input", "residual") == "image":
            return module.model, network_input, f"weights of {cfg.ckpt_path}, attention input: the image"
        with torch.no_grad():
            reconstruction = module.model(network_input).reconstruction
        return module.model, images - reconstruction, f"weights of {cfg.ckpt_path}, attention input: x − x̂"
    from anomaly_attn.models.registry import build_backbone

    torch.manual_seed(int(cfg.seed))  # the same untrained weights on every call
    return build_backbone(cfg), images, f"untrained weights (seed {cfg.seed}), attention input: the image"


def describe_layers(cfg: DictConfig) -> LayerReport:
    """The configured backbone's layers, in encoder order, at ``cfg.model.image_size``, with α health."""
    from anomaly_attn.models import layer_shapes

    images, images_description = measurement_images(cfg)
    model, attention_input, weights_description = _measured_model(cfg, images)
    shapes = layer_shapes(model, int(cfg.model.image_size), int(cfg.model.in_channels))
    health = alpha_health(model, attention_input, list(shapes))
    selected = cfg.get("layer")
    layers = [
        LayerInfo(name, shape, name == model.default_layer, name == selected, health[name])
        for name, shape in shapes.items()
    ]
    return LayerReport(layers, f"{images_description}; {weights_description}")


def _marks(layer: LayerInfo) -> list[str]:
    marks = []
    if layer.is_default:
        marks.append("default")
    if layer.is_selected:
        marks.append("selected (layer=)")
    if layer.is_flat:
        marks.append("flat: constant map, image score only")
    if layer.health is not None and layer.health.degenerate:
        cause = "padding artifact" if layer.health.border_artifact else "zero"
        marks.append(f"α degenerate ({cause}): {'/'.join(alpha_variants())} maps here are not attention")
    return marks


def format_layers(cfg: DictConfig, report: LayerReport) -> str:
    """A plain-text table: layer, output shape, alpha_zero, alpha_circular, marks; notes after it."""
    layers = report.layers
    header = (
        f"model={cfg.model.name} image_size={cfg.model.image_size} in_channels={cfg.model.in_channels}: "
        f"{len(layers)} layers"
    )
    legend = (
        "alpha = mean|α_c| / mean|G| with the model's padding (zero) and every convolution circular "
        f"(circular), on {report.measured_on}"
    )
    width = max(len("layer"), *(len(layer.name) for layer in layers))
    columns = f"  {'layer':<{width}}  {'shape':<14}  {'alpha_zero':>10}  {'alpha_circ':>10}  marks"
    lines = [header, legend, columns]
    for layer in layers:
        shape = "×".join(map(str, layer.shape))
        zero = f"{layer.health.alpha_zero:.1e}" if layer.health else ""
        circular = f"{layer.health.alpha_circular:.1e}" if layer.health else ""
        row = f"  {layer.name:<{width}}  {shape:<14}  {zero:>10}  {circular:>10}  {', '.join(_marks(layer))}"
        lines.append(row.rstrip())
    if report.zero_padded_convs:
        lines.append(
            f"note: {', '.join(report.zero_padded_convs)} kept zero padding in the circular pass (input "
            "smaller than the padding), so alpha_circular may overstate α at the layers before them"
        )
    return "\n".join(lines)


def _compose(overrides: list[str]) -> DictConfig:
    """The training config, or with ``ckpt_path=`` the evaluate config completed from the checkpoint."""
    with_checkpoint = any(override.split("=", 1)[0].lstrip("+") == "ckpt_path" for override in overrides)
    cfg = compose_config(overrides, "evaluate" if with_checkpoint else "config", with_hydra=False)
    if with_checkpoint:
        from anomaly_attn.jobs.job_config import config_for_checkpoint

        cfg = config_for_checkpoint(cfg, overrides)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """Compose the config with ``argv`` overrides and print the layer table."""
    arguments = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    if "--help" in arguments or "-h" in arguments:
        print(__doc__)
        return 0
    try:
        overrides = with_user_config_dirs(arguments)
        cfg = _compose(overrides)
        report = describe_layers(cfg)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, RuntimeError, OSError) as error:
        if debug_requested():
            traceback.print_exc()
        print_error(describe(error))
        return 2
    print(format_layers(cfg, report))
    selected = cfg.get("layer")
    if selected is not None and not any(layer.is_selected for layer in report.layers):
        count = len(report.layers)
        print(f"error: layer={selected!r} is not one of the {count} layers above", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
