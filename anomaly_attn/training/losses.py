"""Reconstruction losses (by name, and weighted sums of them) and attention losses on map batches.

Reconstruction losses take ``(reconstruction, target)`` with both in [0, 1] (the models end in a
sigmoid) and return a scalar averaged over the batch. Attention losses take a map batch
``B×1×H×W`` and return a scalar to be *minimised*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from anomaly_attn.common.registries import Registry


def ssim_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``1 − SSIM`` (11×11 Gaussian window, σ = 1.5, data range 1), averaged over the batch."""
    similarity = structural_similarity_index_measure(
        reconstruction, target, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0
    )
    return 1.0 - similarity


LossFn = Callable[[Tensor, Tensor], Tensor]

# name -> loss(reconstruction, target) -> scalar, filled by @register_loss (a term of conf/loss/*.yaml).
RECONSTRUCTION_LOSSES: Registry[LossFn] = Registry("reconstruction loss")


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    """Decorator: make ``fn(reconstruction, target) -> scalar`` the reconstruction loss ``name``, usable as
    a term of a loss yaml (``terms: {name: 1.0}``)."""

    return RECONSTRUCTION_LOSSES.register(name)


# BCE needs reconstructions in [0, 1]; it refuses to run under autocast (use 32-bit precision).
register_loss("bce")(F.binary_cross_entropy)
register_loss("mse")(F.mse_loss)
register_loss("l1")(F.l1_loss)
register_loss("ssim")(ssim_loss)


def list_losses() -> list[str]:
    """Names of the registered reconstruction losses, sorted."""
    return RECONSTRUCTION_LOSSES.names()


def reconstruction_loss(name: str, reconstruction: Tensor, target: Tensor) -> Tensor:
    """The reconstruction loss ``name`` (a key of ``RECONSTRUCTION_LOSSES``)."""
    return RECONSTRUCTION_LOSSES.get(name)(reconstruction, target)


class ReconstructionLoss(nn.Module):
    """Weighted sum of named reconstruction losses, e.g. ``ReconstructionLoss({"mse": 1.0, "ssim": 0.5})``."""

    def __init__(self, terms: Mapping[str, float]) -> None:
        super().__init__()
        if not terms:
            raise ValueError(
                f"ReconstructionLoss needs at least one term, e.g. {{'mse': 1.0}}; valid names: "
                f"{list_losses()}"
            )
        unknown = sorted(set(terms) - set(RECONSTRUCTION_LOSSES))
        if unknown:
            raise ValueError(f"Unknown reconstruction loss(es) {unknown}; valid: {list_losses()}")
        self.terms = {str(name): float(weight) for name, weight in terms.items()}

    def components(self, reconstruction: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each term's unweighted value (for logging)."""
        return {name: reconstruction_loss(name, reconstruction, target) for name in self.terms}

    def forward(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """``Σ weight · loss`` over the configured terms."""
        values = self.components(reconstruction, target)
        return sum(weight * values[name] for name, weight in self.terms.items())

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={weight:g}" for name, weight in self.terms.items())


def mean_attention_loss(maps: Tensor) -> Tensor:
    """The research code's loss: mean attention on normal images (minimised)."""
    return maps.mean()


def mean_std_attention_loss(maps: Tensor, beta: float = 0.5) -> Tensor:
    """Seed variant: ``mean(M) − β·std(M)`` over the whole batch (``torch.std``, unbiased)."""
    return maps.mean() - beta * maps.std()


def expansion_attention_loss(maps: Tensor) -> Tensor:
    """CAVGA's attention expansion: ``mean(1 − sigmoid(M))``, pushing attention over all normal regions."""
    return (1.0 - torch.sigmoid(maps)).mean()


def no_attention_loss(maps: Tensor) -> Tensor:
    """A zero that keeps the device and dtype of ``maps`` (attention loss switched off)."""
    return maps.new_zeros(())


# name -> loss(maps) -> scalar to minimise, filled by @register_attention_loss (``map.loss``).
ATTENTION_LOSSES: Registry[Callable[..., Tensor]] = Registry("attention loss")


def register_attention_loss(name: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: make ``fn(maps) -> scalar`` the attention loss ``name`` (``map.loss=name``)."""

    return ATTENTION_LOSSES.register(name)


register_attention_loss("mean")(mean_attention_loss)
register_attention_loss("mean_std")(mean_std_attention_loss)
register_attention_loss("expansion")(expansion_attention_loss)
register_attention_loss("none")(no_attention_loss)


def list_attention_losses() -> list[str]:
    """Names of the registered attention losses, sorted."""
    return ATTENTION_LOSSES.names()


def attention_loss(name: str, maps: Tensor, **options: float) -> Tensor:
    """The attention loss ``name`` (a key of ``ATTENTION_LOSSES``) of a map batch; options e.g. ``beta``."""
    return ATTENTION_LOSSES.get(name)(maps, **options)
