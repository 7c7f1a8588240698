"""``mnist_ae``: the research code's Fashion-MNIST autoencoder (docs/METHOD.md, "Backbones").

Encoder indices (``encoder.N``) as the research code's: 0 Conv 1→8 k3 s2 p1, 1 ReLU, 2 Conv 8→16 k3 s2 p1,
3 BatchNorm, 4 ReLU, 5 Conv 16→32 k3 s2 p0, 6 ReLU, 7 Flatten, 8 Linear 288→128, 9 ReLU,
10 Linear 128→3. The research code's layer ``encoder.3`` is the BatchNorm after the second convolution
(16×7×7 at 28²). The latent ``s`` is the 3-d output of ``encoder.10``.
"""

from __future__ import annotations

import torch
from torch import nn

from anomaly_attn.models.base import ReconstructionModel, ReconstructionOutput, check_in_channels
from anomaly_attn.models.registry import register_model

_TOTAL_STRIDE = 4


@register_model("mnist_ae")
class MnistAutoencoder(ReconstructionModel):
    """The research code's small autoencoder for 1×28×28 images.

    Any ``image_size`` ≥ 12 works (the research code used 28): each transposed convolution of the mirrored
    decoder gets the ``output_padding`` (0 or 1) that brings it back to its encoder layer's size. The
    decoder: Linear 3→128→32·g², then transposed convolutions 32→16→8→C with BatchNorm, ReLU and a
    final sigmoid.
    """

    default_layer = "encoder.3"
    total_stride = _TOTAL_STRIDE

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        latent_dim: int = 3,
        hidden_dim: int = 128,
    ) -> None:
        super().__init__()
        if image_size < 12:
            raise ValueError(
                f"{self.registry_name}: image_size={image_size} must be at least 12; the research code "
                "used 28"
            )
        check_in_channels(self.registry_name, in_channels)
        # Spatial sizes after each encoder convolution (k3 s2 p1, k3 s2 p1, k3 s2 p0).
        size1 = (image_size - 1) // 2 + 1
        size2 = (size1 - 1) // 2 + 1
        grid_size = (size2 - 3) // 2 + 1
        flat_dim = 32 * grid_size**2
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=0),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, flat_dim),
            nn.ReLU(),
            nn.Unflatten(1, (32, grid_size, grid_size)),
            nn.ConvTranspose2d(32, 16, 3, stride=2, output_padding=size2 - (2 * grid_size + 1)),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=size1 - (2 * size2 - 1)),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(
                8, in_channels, 3, stride=2, padding=1, output_padding=image_size - (2 * size1 - 1)
            ),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> ReconstructionOutput:
        latent = self.encoder(x)
        return ReconstructionOutput(self.decoder(latent), latent, self._zero_kl(latent))
