"""Control maps: the non-gradient anomaly maps every attention map is reported next to.

Each map is ``B×1×H×W`` at the input's size, like the gradient-attention maps. The residual maps
use the model's reconstruction; the image high-pass uses no model at all (a detector of edges and
bright spots, to show how much of a score brightness or texture alone explains).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_attn.common.registries import Registry
from anomaly_attn.maps.postprocess import gaussian_smooth

# Blur std (pixels) of the high-pass controls when called through the registry.
DEFAULT_HIGHPASS_SIGMA = 4.0
"""The one high-pass σ default (``evaluation.highpass_sigma`` in conf/config.yaml says the same)."""


def residual_l2(x: Tensor, reconstruction: Tensor) -> Tensor:
    """Squared residual ``(x − x̂)²`` averaged over channels."""
    return (x - reconstruction).pow(2).mean(dim=1, keepdim=True)


def residual_ssim(x: Tensor, reconstruction: Tensor) -> Tensor:
    """``1 − SSIM`` map (11×11 Gaussian window, σ = 1.5, data range 1) averaged over channels."""
    _, ssim_map = structural_similarity_index_measure(
        reconstruction,
        x,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )
    return 1.0 - ssim_map.mean(dim=1, keepdim=True)


def _highpass_magnitude(images: Tensor, sigma: float) -> Tensor:
    """``|I − blur_σ(I)|`` averaged over channels, then blurred again with σ."""
    highpass = (images - gaussian_smooth(images, sigma)).abs().mean(dim=1, keepdim=True)
    return gaussian_smooth(highpass, sigma)


def residual_highpass(x: Tensor, reconstruction: Tensor, sigma: float = DEFAULT_HIGHPASS_SIGMA) -> Tensor:
    """High-pass of the signed residual: ``|r − blur_σ(r)|`` (r = x − x̂), channel mean, smoothed with σ.

    Removes the smooth, low-frequency part of the residual (global intensity or colour shifts the
    autoencoder always gets slightly wrong) and keeps local defects.
    """
    return _highpass_magnitude(x - reconstruction, sigma)


def image_highpass(x: Tensor, sigma: float = DEFAULT_HIGHPASS_SIGMA) -> Tensor:
    """High-pass of the input itself: ``|x − blur_σ(x)|``, channel mean, smoothed with σ (no model)."""
    return _highpass_magnitude(x, sigma)


def _image_highpass_control(
    x: Tensor, reconstruction: Tensor, sigma: float = DEFAULT_HIGHPASS_SIGMA
) -> Tensor:
    """Registry adapter: the image high-pass ignores the reconstruction."""
    del reconstruction
    return image_highpass(x, sigma)


# name -> map(x, reconstruction, **options); every entry takes the same two tensors. Every registered
# control is reported in metrics.json `controls`, in registration order (iterating CONTROL_MAPS: the four
# below first).
CONTROL_MAPS: Registry[Callable[..., Tensor]] = Registry("control map")


def register_control(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: make ``fn(x, reconstruction, **options) -> B×1×H×W`` the control map ``name``
    (``map=name`` then uses it as the configured map; every run reports it under ``controls``)."""

    return CONTROL_MAPS.register(name)


register_control("residual_l2")(residual_l2)
register_control("residual_ssim")(residual_ssim)
register_control("residual_highpass")(residual_highpass)
register_control("image_highpass")(_image_highpass_control)


def list_controls() -> list[str]:
    """Names of the registered control maps, sorted (``CONTROL_MAPS`` iterates in registration order)."""
    return CONTROL_MAPS.names()


def control_map(name: str, x: Tensor, reconstruction: Tensor, **options: float) -> Tensor:
    """Compute the control map ``name`` (a key of ``CONTROL_MAPS``) for a batch."""
    return CONTROL_MAPS.get(name)(x, reconstruction, **options)
