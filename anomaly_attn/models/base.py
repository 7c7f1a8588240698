"""What every backbone shares: the output tuple, the base class, and layer lookup helpers.

A backbone is a reconstruction network ``decoder ∘ encoder`` that also exposes the latent code ``s``
(``encode``) that gradient attention differentiates, and names the encoder layers attention may be
computed at (``layer_names``), so that sweeps can address layers by name (``layer=encoder.14``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import nn


class ReconstructionOutput(NamedTuple):
    """What ``model(x)`` returns.

    reconstruction: ``B×C×H×W`` in [0, 1] (sigmoid output), same size as the input.
    latent: ``B×D``, the latent code ``s`` that attention differentiates.
    kl: scalar tensor, the KL term of a variational model (mean over the batch); zero otherwise.
    """

    reconstruction: torch.Tensor
    latent: torch.Tensor
    kl: torch.Tensor


class ReconstructionModel(nn.Module, ABC):
    """Base class of the backbones: ``forward``, ``encode``, ``layer_names`` and the image-size check.

    Subclasses define ``encoder`` (the module whose sub-modules are the addressable layers),
    ``default_layer``, ``total_stride`` (image sizes must be multiples of it; a model may add a stricter
    rule, said in its docstring) and ``encode``/``forward``.
    ``registry_name`` is set by ``@register_model``.
    """

    registry_name: str = ""
    default_layer: str
    total_stride: int

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code ``s`` (``B×D``) of ``x``, without running the decoder."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        """Reconstruct ``x``; also return its latent code and KL term."""

    def layer_names(self) -> list[str]:
        """Addressable encoder layers, named as ``named_modules()`` names them (``encoder.0``, ...)."""
        return [f"encoder.{name}" for name, _ in self.encoder.named_children()]

    def _zero_kl(self, reference: torch.Tensor) -> torch.Tensor:
        """The KL term of a non-variational model: a scalar zero on ``reference``'s device and dtype."""
        return reference.new_zeros(())


def check_image_size(model_name: str, image_size: int, multiple: int, minimum: int | None = None) -> None:
    """Raise ValueError unless ``image_size`` is a multiple of the model's total stride and at least
    ``minimum`` (instance normalisation needs more than one spatial element per channel)."""
    minimum = minimum or multiple
    if image_size < minimum or image_size % multiple != 0:
        lower = max(minimum, image_size // multiple * multiple)
        raise ValueError(
            f"{model_name}: image_size={image_size} must be a multiple of its total stride {multiple} and "
            f"at least {minimum} (e.g. dataset.image_size={lower} or {lower + multiple})"
        )


def check_in_channels(model_name: str, in_channels: int) -> None:
    """Raise ValueError unless ``in_channels`` is a positive channel count (1 gray, 3 RGB)."""
    if in_channels <= 0:
        raise ValueError(f"{model_name}: in_channels={in_channels} must be positive (1 gray, 3 RGB)")


def upsample_block(in_channels: int, out_channels: int, activation: nn.Module | None = None) -> nn.Sequential:
    """A decoder stage: ×2 nearest upsampling, 3×3 conv (no bias), BatchNorm, then ``activation``
    (ReLU when None). Shared by the decoders, so their state-dict keys stay the same."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        activation if activation is not None else nn.ReLU(),
    )


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module that ``name`` addresses: one of ``model.layer_names()`` for a backbone of this package,
    any named submodule (``model.named_modules()``, encoder layers listed first) for another module.

    Raises ValueError naming the unknown layer together with the valid ones.
    """
    if hasattr(model, "layer_names"):
        valid_names = list(model.layer_names())
    else:
        names = [n for n, _ in model.named_modules() if n]
        valid_names = sorted(names, key=lambda n: not n.startswith("encoder."))  # stable: encoder first
    if name not in valid_names:
        model_name = getattr(model, "registry_name", None) or type(model).__name__
        raise ValueError(f"{name!r} is not a layer of {model_name}; valid layers: {', '.join(valid_names)}")
    return model.get_submodule(name)


def layer_shapes(model: ReconstructionModel, image_size: int, in_channels: int) -> dict[str, tuple[int, ...]]:
    """Output shape (without the batch dimension) of every addressable layer for one input image.

    Runs ``encode`` on a zero image in eval mode with forward hooks; restores the training mode.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in model.layer_names():

        def record_shape(_module: nn.Module, _inputs: object, output: torch.Tensor, name: str = name) -> None:
            shapes[name] = tuple(output.shape[1:])

        handles.append(model.get_submodule(name).register_forward_hook(record_shape))
    was_training = model.training
    parameter = next(model.parameters())
    dummy_image = torch.zeros(1, in_channels, image_size, image_size, device=parameter.device)
    try:
        model.eval()
        with torch.no_grad():
            model.encode(dummy_image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: shapes[name] for name in model.layer_names()}
