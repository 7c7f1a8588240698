"""Attention maps at many layers from one forward and one backward pass.

``attention_map`` differentiates the latent sum to one layer; a layer sweep that calls it once per
layer pays a forward and a backward per layer. ``y = Σ_j s_j`` is the same score for every layer, so
one forward that captures every requested activation and one ``autograd.grad`` to all of them give
every layer's ``G`` at once; each variant is then a cheap combination of ``A`` and ``G``. The maps are
the ones ``attention_map`` gives (the same capture, normalisation and upsampling code:
``anomaly_attn.maps.gradcam``), detached: this path is for scoring and layer selection, not for training
on the maps.

``layer_gradients`` exposes the intermediate step (each layer's ``A`` and RMS-normalised ``G``), so a
caller can take maps and the α statistics of ``anomaly_attn.maps.health`` from the same pass.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anomaly_attn.maps.gradcam import (
    as_feature_map,
    channel_weights,
    encode_capturing,
    rms_normalize,
    score_gradients,
    upsample,
)
from anomaly_attn.maps.gradient import single_backward_variants
from anomaly_attn.models.base import resolve_layer

# On CPU the variants run on chunks of samples whose activation is at most this size (4 MB), not on the whole
# batch: their temporaries then stay in cache (at 128² × 32 channels, gradcam_pp and layercam measured
# 2-6x faster sample by sample than on a batch of 32). Every variant works per sample, so the maps are
# the same either way.
_CPU_CHUNK_BYTES = 1 << 22


@dataclass(frozen=True)
class LayerGradient:
    """One layer's activation ``A`` and gradient ``G = ∂(Σ_j s_j)/∂A``, RMS-normalised per sample.

    Both detached and shaped B×C×h×w (a flat B×D layer as B×D×1×1), as the variants receive them.
    """

    activation: Tensor
    gradient: Tensor

    @property
    def alpha_ratio(self) -> float:
        """``mean_{b,c} |α_c| / mean |G|`` with ``α_c = mean_hw G_c``: how much of the gradient survives
        the spatial mean. 0 when ``G`` is identically zero (no α to speak of); 1 at a flat layer."""
        mean_gradient = self.gradient.abs().mean().item()
        if mean_gradient == 0:
            return 0.0
        return channel_weights(self.gradient).abs().mean().item() / mean_gradient


def layer_gradients(model: nn.Module, x: Tensor, layers: Sequence[str]) -> dict[str, LayerGradient]:
    """``A`` and normalised ``G`` of every layer in ``layers``: one ``model.encode(x)``, one backward.

    Each layer must run exactly once in ``encode`` and feed the latent. Gradients are enabled inside
    even under ``no_grad``/``inference_mode``; ``model.training`` is left as it is (use eval mode: in
    training mode BatchNorm makes samples interact); nothing of the graph is kept.
    """
    if not layers:
        raise ValueError("layers is empty; pass at least one layer name, e.g. ['encoder.0']")
    if len(set(layers)) != len(layers):
        duplicates = sorted({layer for layer in layers if list(layers).count(layer) > 1})
        raise ValueError(f"layers lists {duplicates} more than once; pass each layer once")
    modules = {layer: resolve_layer(model, layer) for layer in layers}
    with torch.inference_mode(False), torch.enable_grad():
        if x.is_inference():
            x = x.clone()  # inference tensors cannot enter an autograd graph
        activations, latent = encode_capturing(model, modules, x)
        gradients = score_gradients(latent.sum(), activations, create_graph=False, retain_graph=False)
    sole = _sole_owners(gradients)
    return {
        layer: LayerGradient(
            activation=as_feature_map(activations[layer].detach(), layer),
            gradient=rms_normalize(as_feature_map(gradients[layer], layer), in_place=layer in sole),
        )
        for layer in layers
    }


def _sole_owners(gradients: Mapping[str, Tensor]) -> set[str]:
    """The layers whose gradient is the only one on its memory and fills it exactly, so dividing it in
    place changes nothing else (autograd can return views: a Flatten's input gradient views its output's,
    and the latent's gradient is an expanded scalar)."""
    storages = {layer: gradient.untyped_storage() for layer, gradient in gradients.items()}
    users = Counter(storage.data_ptr() for storage in storages.values())
    return {
        layer
        for layer, gradient in gradients.items()
        if users[storages[layer].data_ptr()] == 1
        and storages[layer].nbytes() == gradient.numel() * gradient.element_size()
    }


def maps_from_gradients(
    gradients: Mapping[str, LayerGradient], variants: Sequence[str], output_size: Sequence[int]
) -> dict[tuple[str, str], Tensor]:
    """Every variant's map at every layer of ``gradients``, upsampled to ``output_size`` (B×1×H×W each)."""
    combiners = single_backward_variants(variants)
    maps: dict[tuple[str, str], Tensor] = {}
    for layer, grads in gradients.items():
        activation, gradient = grads.activation, grads.gradient
        batch = activation.shape[0]
        chunk = batch
        if activation.device.type == "cpu":
            chunk = max(1, _CPU_CHUNK_BYTES // (activation[0].numel() * activation.element_size()))
        # All variants stacked as channels: one upsampling call per layer (bilinear is per channel).
        chunks = zip(activation.split(chunk), gradient.split(chunk), strict=True)
        chunk_maps = [
            torch.cat([combine(chunk_activation, chunk_gradient) for combine in combiners.values()], dim=1)
            for chunk_activation, chunk_gradient in chunks
        ]
        stacked = torch.cat(chunk_maps)
        upsampled = upsample(stacked, output_size)
        for index, variant in enumerate(combiners):
            maps[(layer, variant)] = upsampled[:, index : index + 1]
    return maps


def attention_maps_all_layers(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    variants: Sequence[str],
    output_size: tuple[int, int] | None = None,
) -> dict[tuple[str, str], Tensor]:
    """``{(layer, variant): map}`` for every pair, each B×1×H×W (``output_size`` or the input's size).

    Equal to ``attention_map(model, x, layer, variant)`` for each pair (detached), from one forward and
    one backward pass in total. ``expvae`` (one backward per latent dimension) is refused: use
    ``attention_map`` for it.
    """
    single_backward_variants(variants)  # refuse a bad variant before paying for the passes
    gradients = layer_gradients(model, x, layers)
    with torch.no_grad():
        return maps_from_gradients(gradients, variants, output_size or tuple(x.shape[-2:]))
