"""Post-processing of anomaly maps: Gaussian smoothing and image scores.

All functions take map batches shaped ``B×C×H×W`` (anomaly maps have ``C = 1``) and are
differentiable, so they can sit inside a training loss as well as at evaluation time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SCORE_REDUCTIONS = ("max", "topk_mean")

# The kernel reaches this many standard deviations on each side (scipy.ndimage's default).
_GAUSSIAN_TRUNCATE = 4.0


def _gaussian_kernel_1d(sigma: float, radius: int, like: Tensor) -> Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Blur every channel of ``maps`` (B×C×H×W) with an isotropic Gaussian of std ``sigma`` pixels.

    Kept instead of ``torchvision.transforms.v2.functional.gaussian_blur`` (same kernel and reflect
    padding, equal to 2e-6): torchvision convolves with the full k×k kernel, this makes two 1-D passes,
    which is several times faster at the σ = 2-4 the map selection tries (``benchmarks/bench_library.py``,
    BENCHMARKS.md), and it also truncates the kernel on maps smaller than it where torchvision's reflect
    padding fails.

    Separable (one row pass, one column pass) with reflect padding, so borders are not darkened
    the way zero padding would darken them. The kernel is truncated at 4σ like
    ``scipy.ndimage.gaussian_filter``, and additionally at ``size − 1`` pixels so reflect padding
    stays valid on small maps. ``sigma == 0`` returns ``maps`` unchanged.
    """
    if sigma < 0:
        raise ValueError(f"gaussian_smooth: sigma must be >= 0 (0 disables smoothing), got {sigma}")
    if sigma == 0:
        return maps
    if maps.ndim != 4:
        raise ValueError(f"gaussian_smooth expects maps shaped B×C×H×W, got shape {tuple(maps.shape)}")
    batch, channels, height, width = maps.shape
    smoothed = maps.reshape(batch * channels, 1, height, width)
    full_radius = math.ceil(_GAUSSIAN_TRUNCATE * sigma)
    for axis in (2, 3):  # rows, then columns
        radius = min(full_radius, smoothed.shape[axis] - 1)
        if radius == 0:
            continue
        kernel = _gaussian_kernel_1d(sigma, radius, smoothed)
        # F.pad's order is (left, right, top, bottom): pad only along the axis being blurred.
        if axis == 2:
            kernel, padding = kernel.view(1, 1, -1, 1), (0, 0, radius, radius)
        else:
            kernel, padding = kernel.view(1, 1, 1, -1), (radius, radius, 0, 0)
        smoothed = F.conv2d(F.pad(smoothed, padding, mode="reflect"), kernel)
    return smoothed.reshape(batch, channels, height, width)


def image_scores(maps: Tensor, reduction: str = "max", topk_percent: float = 1.0) -> Tensor:
    """One anomaly score per image (shape ``B``) from its map.

    ``max``: the largest map value. ``topk_mean``: the mean of the largest ``topk_percent`` % of
    the map's values (at least one value), less sensitive to a single noisy pixel than the max.
    """
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)  # values only: ~10x faster than max(dim=1), which also finds indices
    if reduction == "topk_mean":
        if not 0 < topk_percent <= 100:
            raise ValueError(f"image_scores: topk_percent must be in (0, 100], got {topk_percent}")
        count = max(1, math.ceil(flat.shape[1] * topk_percent / 100))
        return flat.topk(count, dim=1).values.mean(dim=1)
    raise ValueError(f"Unknown image score reduction {reduction!r}; valid: {list(IMAGE_SCORE_REDUCTIONS)}")
