"""Differentiable gradient attention (Grad-CAM on the latent code) and the configured anomaly map.

For a target layer with activation ``A`` (B×C×h×w) and the latent code ``s = model.encode(x)``:
the score is ``y = Σ_j s_j``, its gradient ``G = ∂y/∂A`` is normalised per sample by its RMS,
``α_c = mean_{h,w} G_c``, and a *variant* combines ``A`` and ``G`` into a B×1×h×w map, which is
upsampled bilinearly to the input size (docs/METHOD.md, "Gradient attention").

The map stays in the autograd graph, so it can be trained on (an attention loss): with
``create_graph=False`` (the research code) ``G`` is a constant and the loss reaches the weights only through
``A``; with ``create_graph=True`` it also reaches them through ``G`` (second order).

A variant is one function ``(activation, gradient) -> map`` registered with ``register_variant``.
The pieces shared with the many-layer maps (``anomaly_attn.maps.multilayer``): capturing activations
during ``encode``, the gradient, its normalisation, α and the upsampling, are ``anomaly_attn.maps.gradcam``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.common.registries import Registry
from anomaly_attn.maps.gradcam import (
    as_feature_map,
    channel_weighted_sum,
    channel_weights,
    encode_capturing,
    rms_normalize,
    score_gradients,
    upsample,
)
from anomaly_attn.models.base import resolve_layer

# Grad-CAM++'s guard against a zero denominator (as in the reference implementation).
_GRADCAM_PP_EPS = 1e-6

VariantFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class _Variant:
    combine: VariantFunction
    per_latent_dim: bool
    uses_alpha: bool


# name -> _Variant, filled by @register_variant; a taken name is judged by the variant's function.
_VARIANTS: Registry[_Variant] = Registry("attention variant", definition=lambda variant: variant.combine)


def register_variant(
    name: str, *, per_latent_dim: bool = False, uses_alpha: bool = False
) -> Callable[[VariantFunction], VariantFunction]:
    """Register ``fn(activation, gradient) -> map`` as the attention variant ``name``.

    ``activation`` and ``gradient`` are B×C×h×w (the gradient already RMS-normalised per sample);
    the function returns B×1×h×w. With ``per_latent_dim=True`` the function is applied once per
    latent dimension ``j`` with ``G = ∂s_j/∂A`` and the maps are averaged (expVAE).
    ``uses_alpha=True`` says the map is built from the channel weights ``α_c = mean_hw G_c``, so it
    carries no attention at a layer where α is degenerate (``anomaly_attn.maps.health``).
    """

    def decorator(fn: VariantFunction) -> VariantFunction:
        _VARIANTS.register(name, _Variant(combine=fn, per_latent_dim=per_latent_dim, uses_alpha=uses_alpha))
        return fn

    return decorator


def list_variants() -> list[str]:
    """Names of the registered attention variants, sorted."""
    return _VARIANTS.names()


def alpha_variants() -> list[str]:
    """Names of the registered variants built from ``α_c = mean_hw G_c`` (``uses_alpha=True``)."""
    return sorted(name for name, spec in _VARIANTS.items() if spec.uses_alpha)


@register_variant("mean_abs_cam", uses_alpha=True)
def seed_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """The research code's map: ``mean_c |α_c · A_c|`` (sign-free, so it cannot flip between trainings).

    Computed as ``Σ_c |α_c|·|A_c| / C`` (``|α_c A_c| = |α_c|·|A_c|``), a channel-weighted sum.
    """
    weights = channel_weights(gradient).abs()
    return channel_weighted_sum(weights, activation.abs()) / activation.shape[1]


@register_variant("gradcam", uses_alpha=True)
def gradcam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """Grad-CAM: ``ReLU(Σ_c α_c A_c)``."""
    return F.relu(channel_weighted_sum(channel_weights(gradient), activation))


@register_variant("gradcam_abs", uses_alpha=True)
def gradcam_abs_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """expVAE's form of Grad-CAM: ``|Σ_c α_c A_c|`` (the latent sum has no preferred sign)."""
    return channel_weighted_sum(channel_weights(gradient), activation).abs()


@register_variant("gradcam_pp")
def gradcam_pp_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """Grad-CAM++: ``ReLU(Σ_c w_c A_c)`` with ``w_c = Σ_{h,w} a_c ReLU(G_c)``.

    ``a_c = G² / (2G² + Σ_{h,w}A_c · G³)`` is the usual closed form (exponential score); it assumes
    non-negative activations (target a layer after a ReLU). Only ``G > 0`` contributes (the ``ReLU(G)``
    factor), so ``a_c`` is evaluated on ``ReLU(G)``, which also sets it to 0 where ``G = 0``.
    """
    positive = F.relu(gradient)
    positive_sq = positive * positive
    activation_sums = activation.sum(dim=(2, 3), keepdim=True)
    if torch.is_grad_enabled() and (activation.requires_grad or gradient.requires_grad):
        denominator = positive_sq * (2 + activation_sums * positive) + _GRADCAM_PP_EPS
        weights = (positive_sq * positive / denominator).sum(dim=(2, 3), keepdim=True)
    else:  # the same arithmetic on fewer temporaries (no graph needs them): ~1.5x faster, equal bits
        denominator = activation_sums * positive
        denominator.add_(2).mul_(positive_sq).add_(_GRADCAM_PP_EPS)
        weights = positive_sq.mul_(positive).div_(denominator).sum(dim=(2, 3), keepdim=True)
    return F.relu(channel_weighted_sum(weights, activation))


@register_variant("layercam")
def layercam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """LayerCAM: ``ReLU(Σ_c ReLU(G_c) ⊙ A_c)`` (element-wise weights keep fine spatial detail)."""
    return F.relu((F.relu(gradient) * activation).sum(dim=1, keepdim=True))


@register_variant("expvae", per_latent_dim=True, uses_alpha=True)
def expvae_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """expVAE: a ``gradcam_abs`` map per latent dimension; ``attention_map`` averages them."""
    return gradcam_abs_map(activation, gradient)


def single_backward_variants(variants: Sequence[str]) -> dict[str, VariantFunction]:
    """``{variant: fn(activation, gradient) -> map}`` of ``variants`` for maps from one backward pass;
    refuses unknown variants and those needing a backward pass per latent dimension (``expvae``)."""
    specs = {variant: _variant(variant) for variant in variants}
    per_latent_dim = [variant for variant, spec in specs.items() if spec.per_latent_dim]
    if per_latent_dim:
        raise ValueError(
            f"variant(s) {per_latent_dim} need one backward pass per latent dimension, which a single "
            "backward to all layers cannot give; compute them with attention_map(model, x, layer, variant)"
        )
    return {variant: spec.combine for variant, spec in specs.items()}


def _variant(name: str) -> _Variant:
    return _VARIANTS.get(name)


def _latent_dim_subset(latent_size: int, latent_dims: int | None) -> list[int]:
    """All latent dimensions, or ``latent_dims`` of them evenly spaced (deterministic, ends kept)."""
    if latent_dims is None or latent_dims >= latent_size:
        return list(range(latent_size))
    if latent_dims < 1:
        raise ValueError(f"latent_dims must be >= 1 (or None for all dimensions), got {latent_dims}")
    return torch.linspace(0, latent_size - 1, latent_dims).round().long().tolist()


def attention_map(
    model: nn.Module,
    x: Tensor,
    layer: str,
    variant: str = "mean_abs_cam",
    create_graph: bool = False,
    output_size: tuple[int, int] | None = None,
    latent_dims: int | None = None,
) -> Tensor:
    """Gradient-attention maps (B×1×H×W, at ``output_size`` or the input's size) of ``model`` on ``x``.

    ``layer`` names a module of ``model`` that ``model.encode`` runs (e.g. ``encoder.15``);
    ``variant`` is one of ``list_variants()``. One backward pass serves the whole batch (its score
    is the sum over samples, which leaves each sample's gradient unchanged as long as samples do
    not interact, i.e. no BatchNorm in training mode); ``expvae`` takes one backward pass per latent
    dimension, or per ``latent_dims`` evenly spaced dimensions (ignored by the other variants).

    Gradients are enabled inside even if the caller runs under ``no_grad``/``inference_mode``;
    ``model.training`` is left as it is; the result keeps its graph to the weights (through ``A``,
    and through ``G`` when ``create_graph=True``), so detach it if you only need values.
    """
    spec = _variant(variant)
    module = resolve_layer(model, layer)
    with torch.inference_mode(False), torch.enable_grad():
        if x.is_inference():
            x = x.clone()  # inference tensors cannot enter an autograd graph
        activations, latent = encode_capturing(model, {layer: module}, x)
        activation = activations[layer]
        feature_map = as_feature_map(activation, layer)
        latent = latent.flatten(1)
        if spec.per_latent_dim:
            dims = _latent_dim_subset(latent.shape[1], latent_dims)
            summed_maps = 0
            for index, dim in enumerate(dims):
                # Later passes need the graph from the latent to A; the last one may free it.
                retain = create_graph or index < len(dims) - 1
                gradient = score_gradients(latent[:, dim].sum(), activations, create_graph, retain)[layer]
                summed_maps = summed_maps + spec.combine(
                    feature_map, rms_normalize(as_feature_map(gradient, layer))
                )
            maps = summed_maps / len(dims)
        else:
            gradient = score_gradients(latent.sum(), activations, create_graph, create_graph)[layer]
            maps = spec.combine(feature_map, rms_normalize(as_feature_map(gradient, layer)))
        return upsample(maps, output_size if output_size is not None else x.shape[-2:])


ATTENTION_INPUTS = ("residual", "image")
