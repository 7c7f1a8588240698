"""Differentiable gradient attention (Grad-CAM on the latent code) and the configured anomaly map.

For a target layer with activation ``A`` (B×C×h×w) and the latent code ``s = model.encode(x)``:
the score is ``y = Σ_j s_j``, its gradient ``G = ∂y/∂A`` is normalised per sample by its RMS,
``α_c = mean_{h,w} G_c``, and a *variant* combines ``A`` and ``G`` into a B×1×h×w map, which is
upsampled bilinearly to the input size (docs/METHOD.md, "Gradient attention").

The map stays in the autograd graph, so it can be trained on (an attention loss): with
``create_graph=False`` (the seed) ``G`` is a constant and the loss reaches the weights only through
``A``; with ``create_graph=True`` it also reaches them through ``G`` (second order).

A variant is one function ``(activation, gradient) -> map`` registered with ``register_variant``.
The pieces shared with the many-layer maps (``anomaly_attn.maps.multilayer``) live here: capturing
activations during ``encode``, the gradient, its normalisation and the upsampling.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_attn.models.base import resolve_layer

# Added to the per-sample gradient RMS before dividing (docs/METHOD.md, "Gradient attention", step 2).
GRADIENT_RMS_EPS = 1e-5
# Grad-CAM++'s guard against a zero denominator (as in the reference implementation).
_GRADCAM_PP_EPS = 1e-6

VariantFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class _Variant:
    combine: VariantFunction
    per_latent_dim: bool
    uses_alpha: bool


_VARIANTS: dict[str, _Variant] = {}


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
        if name in _VARIANTS:
            raise ValueError(f"Attention variant {name!r} is already registered")
        _VARIANTS[name] = _Variant(combine=fn, per_latent_dim=per_latent_dim, uses_alpha=uses_alpha)
        return fn

    return decorator


def list_variants() -> list[str]:
    """Names of the registered attention variants."""
    return sorted(_VARIANTS)


def alpha_variants() -> list[str]:
    """Names of the registered variants built from ``α_c = mean_hw G_c`` (``uses_alpha=True``)."""
    return sorted(name for name, spec in _VARIANTS.items() if spec.uses_alpha)


def _channel_weights(gradient: Tensor) -> Tensor:
    """``α_c = mean_{h,w} G_c``, shaped B×C×1×1."""
    return gradient.mean(dim=(2, 3), keepdim=True)


def _channel_weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """``Σ_c w_c A_c`` (B×1×h×w) for per-sample channel weights ``w`` (B×C×1×1).

    One batched matrix product: no B×C×h×w temporary, which on large early layers costs more than
    the arithmetic (measured ~8x faster than multiply-then-sum at 32×32×128²).
    """
    batch, channels, height, width = activation.shape
    summed = torch.matmul(
        weights.reshape(batch, 1, channels), activation.reshape(batch, channels, height * width)
    )
    return summed.view(batch, 1, height, width)


@register_variant("seed", uses_alpha=True)
def seed_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """The seed's map: ``mean_c |α_c · A_c|`` (sign-free, so it cannot flip between trainings).

    Computed as ``Σ_c |α_c|·|A_c| / C`` (``|α_c A_c| = |α_c|·|A_c|``), a channel-weighted sum.
    """
    channel_weights = _channel_weights(gradient).abs()
    return _channel_weighted_sum(channel_weights, activation.abs()) / activation.shape[1]


@register_variant("gradcam", uses_alpha=True)
def gradcam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """Grad-CAM: ``ReLU(Σ_c α_c A_c)``."""
    return F.relu(_channel_weighted_sum(_channel_weights(gradient), activation))


@register_variant("gradcam_abs", uses_alpha=True)
def gradcam_abs_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """expVAE's form of Grad-CAM: ``|Σ_c α_c A_c|`` (the latent sum has no preferred sign)."""
    return _channel_weighted_sum(_channel_weights(gradient), activation).abs()


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
    return F.relu(_channel_weighted_sum(weights, activation))


@register_variant("layercam")
def layercam_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """LayerCAM: ``ReLU(Σ_c ReLU(G_c) ⊙ A_c)`` (element-wise weights keep fine spatial detail)."""
    return F.relu((F.relu(gradient) * activation).sum(dim=1, keepdim=True))


@register_variant("expvae", per_latent_dim=True, uses_alpha=True)
def expvae_map(activation: Tensor, gradient: Tensor) -> Tensor:
    """expVAE: a ``gradcam_abs`` map per latent dimension; ``attention_map`` averages them."""
    return gradcam_abs_map(activation, gradient)


def _variant(name: str) -> _Variant:
    if name not in _VARIANTS:
        raise ValueError(f"Unknown attention variant {name!r}; valid: {list_variants()}")
    return _VARIANTS[name]


# Models seen overwriting a hooked activation in place (e.g. ReLU(inplace=True) after the layer): their
# captured activations are copied for later layers. Keyed weakly: a model that is dropped is forgotten.
_MODELS_NEEDING_COPIES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _encode_capturing(
    model: nn.Module, modules: Mapping[str, nn.Module], x: Tensor
) -> tuple[dict[str, Tensor], Tensor]:
    """Run ``model.encode(x)`` once and return (activation of each named module, latent); no hook survives.

    Later layers read the captured activation itself, not a copy (copying every early layer's
    activation cost ~10 % of an all-layer map). If an in-place op after a hooked layer changes it (its
    version counter moves), the pass is run again with copies, and this model's later passes copy.
    """
    copy = _MODELS_NEEDING_COPIES.get(model, False)
    activations, latent, versions = _run_capturing(model, modules, x, copy)
    if not copy and any(activations[layer]._version != version for layer, version in versions.items()):
        _MODELS_NEEDING_COPIES[model] = True
        activations, latent, _ = _run_capturing(model, modules, x, copy=True)
    return activations, latent


def _run_capturing(
    model: nn.Module, modules: Mapping[str, nn.Module], x: Tensor, copy: bool
) -> tuple[dict[str, Tensor], Tensor, dict[str, int]]:
    """One hooked ``model.encode(x)``: (activations, latent, each activation's version when captured)."""
    captured: dict[str, list[Tensor]] = {layer: [] for layer in modules}
    versions: dict[str, int] = {}

    def hook_for(layer: str) -> Callable[[nn.Module, tuple, object], Tensor]:
        def capture(_module: nn.Module, _inputs: tuple, output: object) -> Tensor:
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"Layer {layer!r} returns {type(output).__name__}; attention needs a layer returning "
                    "a tensor"
                )
            # A frozen model on an input without grad: make A itself the leaf we differentiate to.
            activation = output if output.requires_grad else output.detach().requires_grad_(True)
            captured[layer].append(activation)
            versions.setdefault(layer, activation._version)
            # With ``copy``, later layers see a copy, so an in-place op after this layer
            # (ReLU(inplace=True)) cannot overwrite the activation the map is computed from.
            return activation.clone() if copy else activation

        return capture

    handles = [module.register_forward_hook(hook_for(layer)) for layer, module in modules.items()]
    try:
        latent = model.encode(x)
    finally:
        for handle in handles:
            handle.remove()
    for layer, activations in captured.items():
        if len(activations) != 1:
            raise ValueError(
                f"Layer {layer!r} ran {len(activations)} times during model.encode(); attention needs an "
                "encoder layer that runs exactly once (e.g. one named 'encoder.N')"
            )
    return {layer: activations[0] for layer, activations in captured.items()}, latent, versions


def _as_feature_map(tensor: Tensor, layer: str) -> Tensor:
    """B×C×h×w as is; B×D (Linear layers) as B×D×1×1."""
    if tensor.ndim == 4:
        return tensor
    if tensor.ndim == 2:
        return tensor[:, :, None, None]
    raise ValueError(
        f"Layer {layer!r} has a {tensor.ndim}-D activation of shape {tuple(tensor.shape)}; "
        "attention supports B×C×h×w (conv) and B×D (linear) activations"
    )


def _rms_normalize(gradient: Tensor, in_place: bool = False) -> Tensor:
    """``G / (sqrt(mean(G²)) + 1e-5)`` with the mean taken per sample over C, h, w.

    ``vector_norm`` (not ``sqrt(mean)``) keeps the second-order gradient finite where G is all zero.
    ``in_place``: divide ``gradient`` itself (a detached gradient nothing else reads; no second copy).
    """
    per_sample = gradient.flatten(1)
    rms = torch.linalg.vector_norm(per_sample, dim=1) / math.sqrt(per_sample.shape[1])
    scale = (rms + GRADIENT_RMS_EPS).view(-1, *([1] * (gradient.ndim - 1)))
    return gradient.div_(scale) if in_place else gradient / scale


def _gradients(
    score: Tensor, activations: Mapping[str, Tensor], create_graph: bool, retain_graph: bool
) -> dict[str, Tensor]:
    """``∂score/∂A`` for every activation, from one backward pass."""
    gradients = torch.autograd.grad(
        score,
        list(activations.values()),
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    unused = [layer for layer, gradient in zip(activations, gradients, strict=True) if gradient is None]
    if unused:
        raise ValueError(
            f"The latent code does not depend on layer(s) {unused}; choose layers before the latent"
        )
    return dict(zip(activations, gradients, strict=True))


def _upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of B×1×h×w maps to ``size`` (align_corners=True; docs/METHOD.md,
    "Gradient attention", step 5)."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)


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
    variant: str = "seed",
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
        activations, latent = _encode_capturing(model, {layer: module}, x)
        activation = activations[layer]
        feature_map = _as_feature_map(activation, layer)
        latent = latent.flatten(1)
        if spec.per_latent_dim:
            dims = _latent_dim_subset(latent.shape[1], latent_dims)
            summed_maps = 0
            for index, dim in enumerate(dims):
                # Later passes need the graph from the latent to A; the last one may free it.
                retain = create_graph or index < len(dims) - 1
                gradient = _gradients(latent[:, dim].sum(), activations, create_graph, retain)[layer]
                summed_maps = summed_maps + spec.combine(
                    feature_map, _rms_normalize(_as_feature_map(gradient, layer))
                )
            maps = summed_maps / len(dims)
        else:
            gradient = _gradients(latent.sum(), activations, create_graph, create_graph)[layer]
            maps = spec.combine(feature_map, _rms_normalize(_as_feature_map(gradient, layer)))
        return _upsample(maps, output_size if output_size is not None else x.shape[-2:])


ATTENTION_INPUTS = ("residual", "image")
