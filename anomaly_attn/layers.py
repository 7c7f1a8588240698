"""List a backbone's addressable layers with their output shapes at the configured image size.

    python -m anomaly_attn.layers                                  # conv_ae at the dataset's image size
    python -m anomaly_attn.layers model=unet dataset.image_size=128
    python -m anomaly_attn.layers model=mnist_ae dataset=fmnist

Takes the same overrides as ``anomaly_attn.train`` (the config is composed the same way), so the
names printed are exactly what ``layer=`` and ``'layer=glob(...)'`` accept. The default layer is
marked, and so are flat layers (``B×D`` output, e.g. a Flatten or Linear layer): attention there
has no spatial extent, so its map is constant over each image: it ranks images, not the pixels
within one. Layers whose output feeds an InstanceNorm directly (conv_ae's convolutions
``encoder.0, 3, ..., 24``, including the seed's default ``encoder.15``) are marked too: InstanceNorm ignores a
per-channel shift of its input, so the gradient there has zero spatial mean, ``α_c = mean_hw G_c = 0``,
and every map built from ``α`` (seed, gradcam, gradcam_abs, expvae) is float noise (~1e-8);
``layercam`` and ``gradcam_pp`` (built from ``ReLU(G)``), or the layer after the norm, still work.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from anomaly_attn.configs import CONFIG_DIR, with_user_config_dirs


@dataclass(frozen=True)
class LayerInfo:
    """One addressable layer: its name, output shape (no batch dimension) and role."""

    name: str
    shape: tuple[int, ...]
    is_default: bool
    is_selected: bool
    feeds_instance_norm: bool = False

    @property
    def is_flat(self) -> bool:
        """True when the output is not a C×h×w feature map, so a map from it cannot localize."""
        return len(self.shape) != 3


def feeds_instance_norm(model: nn.Module, name: str) -> bool:
    """True when layer ``name`` is a child of an ``nn.Sequential`` whose next child is an InstanceNorm."""
    parent_name, _, index = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.Sequential) or not index.isdigit() or int(index) + 1 >= len(parent):
        return False
    return isinstance(parent[int(index) + 1], nn.modules.instancenorm._InstanceNorm)


def describe_layers(cfg: DictConfig) -> list[LayerInfo]:
    """The configured backbone's layers, in encoder order, at ``cfg.model.image_size``."""
    from anomaly_attn.models import layer_shapes
    from anomaly_attn.pipeline import build_backbone

    model = build_backbone(cfg)
    shapes = layer_shapes(model, int(cfg.model.image_size), int(cfg.model.in_channels))
    selected = cfg.get("layer")
    return [
        LayerInfo(
            name, shape, name == model.default_layer, name == selected, feeds_instance_norm(model, name)
        )
        for name, shape in shapes.items()
    ]


def format_layers(cfg: DictConfig, layers: list[LayerInfo]) -> str:
    """A plain-text table: layer, output shape, marks (default / selected / flat)."""
    header = (
        f"model={cfg.model.name} image_size={cfg.model.image_size} in_channels={cfg.model.in_channels}: "
        f"{len(layers)} layers"
    )
    width = max(len(layer.name) for layer in layers)
    lines = [header]
    for layer in layers:
        marks = []
        if layer.is_default:
            marks.append("default")
        if layer.is_selected:
            marks.append("selected (layer=)")
        if layer.is_flat:
            marks.append("flat: constant map, image score only")
        if layer.feeds_instance_norm:
            marks.append("feeds InstanceNorm: alpha=0, seed/gradcam/gradcam_abs/expvae maps vanish")
        shape = "×".join(map(str, layer.shape))
        lines.append(f"  {layer.name:<{width}}  {shape:<14}  {', '.join(marks)}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compose the training config with ``argv`` overrides and print the layer table."""
    try:
        overrides = with_user_config_dirs(list(sys.argv[1:] if argv is None else argv))
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        layers = describe_layers(cfg)
    except (HydraException, OmegaConfBaseException, ValueError, TypeError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_layers(cfg, layers))
    selected = cfg.get("layer")
    if selected is not None and not any(layer.is_selected for layer in layers):
        print(f"error: layer={selected!r} is not one of the {len(layers)} layers above", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
