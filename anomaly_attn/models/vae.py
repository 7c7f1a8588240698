"""``vae``: the expVAE convolutional VAE (Liu et al., CVPR 2020; docs/METHOD.md, "Backbones").

Encoder indices as expVAE's ``ConvVAE``: 0 Conv C→ch k4 s2 p1, 1 ReLU, 2 Conv ch→2ch k4 s2 p1,
3 ReLU, 4 Flatten, 5 Linear → hidden, 6 ReLU; then two Linear heads to μ and log σ². expVAE's
attention layer is ``encoder.2`` (the second convolution). The latent ``s`` is μ. In training the
decoder sees ``z = μ + σ·ε`` (reparameterization); in eval it sees μ, so eval outputs are
deterministic. ``kl`` is ``KL(q(z|x) ‖ N(0, I))`` summed over latent dimensions, averaged over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly_attn.models.base import (
    ReconstructionModel,
    ReconstructionOutput,
    check_image_size,
    check_in_channels,
)
from anomaly_attn.models.registry import register_model

_TOTAL_STRIDE = 4


@register_model("vae")
class ConvVAE(ReconstructionModel):
    """expVAE's convolutional VAE; ``image_size`` must be a multiple of 4.

    Defaults are expVAE's (28², 1 channel, ``channels`` 64, ``hidden_dim`` 1024, ``latent_dim`` 32).
    The Linear layers grow with ``image_size``² (``2·channels·(S/4)² × hidden_dim`` weights): lower
    ``channels`` / ``hidden_dim`` for large images.
    """

    default_layer = "encoder.2"
    total_stride = _TOTAL_STRIDE

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        latent_dim: int = 32,
        channels: int = 64,
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__()
        check_image_size(self.registry_name, image_size, _TOTAL_STRIDE)
        check_in_channels(self.registry_name, in_channels)
        grid_size = image_size // _TOTAL_STRIDE
        flat_dim = 2 * channels * grid_size**2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat_dim, hidden_dim),
            nn.ReLU(),
        )
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, flat_dim),
            nn.ReLU(),
            nn.Unflatten(1, (2 * channels, grid_size, grid_size)),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, in_channels, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_mu(self.encoder(x))

    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        hidden = self.encoder(x)
        mu, logvar = self.fc_mu(hidden), self.fc_logvar(hidden)
        if self.training:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        return ReconstructionOutput(self.decoder(z), mu, kl)
