"""The Grad-CAM core that one-layer attention (``anomaly_attn.maps.gradient``) and the many-layer maps
(``anomaly_attn.maps.multilayer``) share: the same code makes both, so their maps are equal.

For target layers with activations ``A`` (B×C×h×w) and the latent code ``s = model.encode(x)``:
:func:`encode_capturing` runs ``encode`` once and captures every ``A``; :func:`score_gradients` gives
``G = ∂y/∂A`` of a score (``y = Σ_j s_j``, or one ``s_j``) for all of them from one backward pass;
:func:`rms_normalize` divides ``G`` per sample by its RMS; :func:`channel_weights` is
``α_c = mean_{h,w} G_c`` and :func:`channel_weighted_sum` ``Σ_c w_c A_c``; :func:`upsample` takes a
B×1×h×w map to the input size (docs/METHOD.md, "Gradient attention").
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Added to the per-sample gradient RMS before dividing (docs/METHOD.md, "Gradient attention", step 2).
GRADIENT_RMS_EPS = 1e-5


def channel_weights(gradient: Tensor) -> Tensor:
    """``α_c = mean_{h,w} G_c``, shaped B×C×1×1."""
    return gradient.mean(dim=(2, 3), keepdim=True)


def channel_weighted_sum(weights: Tensor, activation: Tensor) -> Tensor:
    """``Σ_c w_c A_c`` (B×1×h×w) for per-sample channel weights ``w`` (B×C×1×1).

    One batched matrix product: no B×C×h×w temporary, which on large early layers costs more than
    the arithmetic (measured ~8x faster than multiply-then-sum at 32×32×128²).
    """
    batch, channels, height, width = activation.shape
    summed = torch.matmul(
        weights.reshape(batch, 1, channels), activation.reshape(batch, channels, height * width)
    )
    return summed.view(batch, 1, height, width)


# Models seen overwriting a hooked activation in place (e.g. ReLU(inplace=True) after the layer): their
# captured activations are copied for later layers. Keyed weakly: a model that is dropped is forgotten.
_MODELS_NEEDING_COPIES: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def encode_capturing(
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


def as_feature_map(tensor: Tensor, layer: str) -> Tensor:
    """B×C×h×w as is; B×D (Linear layers) as B×D×1×1."""
    if tensor.ndim == 4:
        return tensor
    if tensor.ndim == 2:
        return tensor[:, :, None, None]
    raise ValueError(
        f"Layer {layer!r} has a {tensor.ndim}-D activation of shape {tuple(tensor.shape)}; "
        "attention supports B×C×h×w (conv) and B×D (linear) activations"
    )


def rms_normalize(gradient: Tensor, in_place: bool = False) -> Tensor:
    """``G / (sqrt(mean(G²)) + 1e-5)`` with the mean taken per sample over C, h, w.

    ``vector_norm`` (not ``sqrt(mean)``) keeps the second-order gradient finite where G is all zero.
    ``in_place``: divide ``gradient`` itself (a detached gradient nothing else reads; no second copy).
    """
    per_sample = gradient.flatten(1)
    rms = torch.linalg.vector_norm(per_sample, dim=1) / math.sqrt(per_sample.shape[1])
    scale = (rms + GRADIENT_RMS_EPS).view(-1, *([1] * (gradient.ndim - 1)))
    return gradient.div_(scale) if in_place else gradient / scale


def score_gradients(
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


def upsample(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling of B×1×h×w maps to ``size`` (align_corners=True; docs/METHOD.md,
    "Gradient attention", step 5)."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)
