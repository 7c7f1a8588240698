"""Is α at a layer attention, or an artifact? A measurement, per layer, on real images.

The α-based variants (``mean_abs_cam``, ``gradcam``, ``gradcam_abs``, ``expvae``: ``register_variant(...,
uses_alpha=True)``) weight channels by ``α_c = mean_hw G_c``. A normalisation that removes per-channel
shifts (InstanceNorm) makes ``Σ_hw G_c`` exactly 0 at its input, and a convolution with weights shared
over space passes that zero sum back to its own input, except where zero padding cuts the kernel at the
border (docs/METHOD.md, "Measured so far"). So on a backbone like ``conv_ae`` α at most layers is the border
alone, and the α maps there are the border effect times ``|A|``, not attention.

``alpha_health`` measures it: the ratio ``mean|α| / mean|G|`` with the model's own padding
(``alpha_zero``) and with every convolution padded circularly (``alpha_circular``, where no kernel is cut
at a border). A layer whose ratio is still ~0 under circular padding has no α of its own
(``degenerate``); if zero padding then lifts it, its α is a padding artifact (``border_artifact``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn

from anomaly_attn.maps.gradient import alpha_variants, list_variants
from anomaly_attn.maps.multilayer import LayerGradient, layer_gradients

# mean|α| / mean|G| below this under circular padding: α is degenerate. Measured on conv_ae (64 px,
# textures and random images): 1e-8 at convolution outputs and <= 2e-7 at ReLU outputs feeding
# conv → InstanceNorm (float round-off), against 0.03-0.7 at InstanceNorm outputs and 0.05-1 on mnist_ae.
ALPHA_DEGENERATE_RATIO = 1e-3


@dataclass(frozen=True)
class AlphaHealth:
    """The α measurement of one layer (ratios ``mean_{b,c}|α_c| / mean|G|``, G RMS-normalised).

    - ``alpha_zero``: with the model's own padding; ``alpha_circular``: every convolution circular.
    - ``zero_padded_convs``: convolutions that kept their padding in the circular pass because their
      input was smaller than the padding (wrap-around impossible); empty when the pass was fully circular.
    """

    alpha_zero: float
    alpha_circular: float
    zero_padded_convs: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        """α carries nothing once no kernel is cut at a border: α-based maps here are not attention."""
        return self.alpha_circular < ALPHA_DEGENERATE_RATIO

    @property
    def border_artifact(self) -> bool:
        """Degenerate, yet non-zero with the model's padding: α is the zero padding's border effect."""
        return self.degenerate and self.alpha_zero >= ALPHA_DEGENERATE_RATIO


def variants_valid_at(health: AlphaHealth) -> list[str]:
    """The registered variants that are attention at a layer of this health: all, less the α-based
    ones (``register_variant(..., uses_alpha=True)``) where α is degenerate."""
    excluded = set(alpha_variants()) if health.degenerate else set()
    return [variant for variant in list_variants() if variant not in excluded]


def _padding_switch(module: nn.Module) -> tuple[str, Callable[[Tensor], Sequence[int]]] | None:
    """(attribute holding the padding mode, x -> F.pad-style pads) of a module that pads, else None."""
    forward_padding = getattr(module, "forward_padding", None)
    if hasattr(module, "pad_mode") and callable(forward_padding):
        return "pad_mode", forward_padding  # pads inside its own forward (conv_ae's SameConv2d)
    if isinstance(module, nn.Conv2d) and any(module._reversed_padding_repeated_twice):
        pads = module._reversed_padding_repeated_twice
        return "padding_mode", lambda _x: pads
    return None


@contextmanager
def circular_padding(model: nn.Module) -> Iterator[list[str]]:
    """Inside the block every convolution of ``model`` pads circularly; afterwards it is exactly as before.

    Switched: ``nn.Conv2d`` with padding > 0 (``padding_mode="circular"``), and any module that pads in its
    own forward and exposes ``pad_mode`` (an ``F.pad`` mode) and ``forward_padding(x)`` (``F.pad``'s pad
    list), like conv_ae's ``SameConv2d``. Other modules that pad inside their forward (e.g. timm's
    ``Conv2dSame``) are not switched. Wrap-around needs each pad <= the input's size along that axis:
    a convolution whose input is smaller keeps its own padding for that call, and its name is appended
    to the yielded list, so a caller can say where the measurement was not circular.
    """
    zero_padded: list[str] = []
    originals: dict[nn.Module, tuple[str, str]] = {}
    handles = []

    def choose_mode(
        name: str, attribute: str, original: str, pads_of: Callable[[Tensor], Sequence[int]]
    ) -> Callable[[nn.Module, tuple], None]:
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            pads = list(pads_of(x))
            # F.pad's order: (left, right, top, bottom), the last axis first, one size per side.
            sizes = [size for size in reversed(x.shape[-(len(pads) // 2) :]) for _ in range(2)]
            fits = all(pad <= size for pad, size in zip(pads, sizes, strict=True))
            setattr(module, attribute, "circular" if fits else original)
            if not fits and name not in zero_padded:
                zero_padded.append(name)

        return pre_hook

    try:
        for name, module in model.named_modules():
            switch = _padding_switch(module)
            if switch is None:
                continue
            attribute, pads_of = switch
            original = getattr(module, attribute)
            originals[module] = (attribute, original)
            handles.append(module.register_forward_pre_hook(choose_mode(name, attribute, original, pads_of)))
        yield zero_padded
    finally:
        for handle in handles:
            handle.remove()
        for module, (attribute, original) in originals.items():
            setattr(module, attribute, original)


def alpha_health(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str],
    gradients: Mapping[str, LayerGradient] | None = None,
) -> dict[str, AlphaHealth]:
    """``{layer: AlphaHealth}`` of ``model`` on the images ``x`` (use real images: α depends on them).

    Runs in eval mode (training mode is restored) with two encode + backward passes, one with the model's
    padding and one under ``circular_padding``. ``gradients``: ``layer_gradients(model, x, layers)``
    already computed in eval mode on the same ``x`` (e.g. for the maps), which saves the first pass.
    Flat (B×D) layers have ``α = G`` (ratio 1): never degenerate unless ``G`` is zero.
    """
    was_training = model.training
    model.eval()
    try:
        if gradients is None:
            gradients = layer_gradients(model, x, layers)
        with circular_padding(model) as zero_padded:
            circular = layer_gradients(model, x, layers)
    finally:
        model.train(was_training)
    return {
        layer: AlphaHealth(
            alpha_zero=gradients[layer].alpha_ratio,
            alpha_circular=circular[layer].alpha_ratio,
            zero_padded_convs=tuple(zero_padded),
        )
        for layer in layers
    }
