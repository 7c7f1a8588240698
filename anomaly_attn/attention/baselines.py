"""Non-gradient anomaly maps: the controls every attention map is reported next to.

Each map is ``B×1×H×W`` at the input's size, like the gradient-attention maps. The residual maps
use the model's reconstruction; the image high-pass uses no model at all (a detector of edges and
bright spots, to show how much of a score brightness or texture alone explains).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_attn.attention.postprocess import gaussian_smooth

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


def _image_highpass_baseline(
    x: Tensor, reconstruction: Tensor, sigma: float = DEFAULT_HIGHPASS_SIGMA
) -> Tensor:
    """Registry adapter: the image high-pass ignores the reconstruction."""
    del reconstruction
    return image_highpass(x, sigma)


# name -> map(x, reconstruction, **options); every entry takes the same two tensors.
BASELINE_MAPS: dict[str, Callable[..., Tensor]] = {
    "residual_l2": residual_l2,
    "residual_ssim": residual_ssim,
    "residual_highpass": residual_highpass,
    "image_highpass": _image_highpass_baseline,
}


def baseline_map(name: str, x: Tensor, reconstruction: Tensor, **options: float) -> Tensor:
    """Compute the baseline map ``name`` (a key of ``BASELINE_MAPS``) for a batch."""
    if name not in BASELINE_MAPS:
        raise ValueError(f"Unknown baseline map {name!r}; valid: {sorted(BASELINE_MAPS)}")
    return BASELINE_MAPS[name](x, reconstruction, **options)
